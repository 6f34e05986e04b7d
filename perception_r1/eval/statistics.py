"""McNemar's test on paired per-item outcomes: did a checkpoint fix more items than it broke?

The first Perception-R1 paper compares a model before and after visual-perception training on the same items and
reports McNemar p-values from the discordant pairs: ``b`` items right before and wrong after, ``c`` wrong before
and right after. With few discordant pairs (``b + c < 25``) the exact two-sided binomial test
(``scipy.stats.binomtest(b, b + c, 0.5)``) is used, as is usual; otherwise the continuity-corrected chi-square
``(|b - c| - 1)² / (b + c)`` with one degree of freedom. Figures from the paper: ``b, c = 1, 5 → p ≈ 0.22``;
``2, 4 → p ≈ 0.69``; ``2, 10 → p ≈ 0.04``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..jsonl import iter_jsonl

EXACT_BELOW = 25


@dataclass(frozen=True)
class PairedTable:
    """The 2×2 table of paired outcomes: ``a`` both right, ``b`` right→wrong, ``c`` wrong→right, ``d`` both wrong."""

    a: int
    b: int
    c: int
    d: int

    @property
    def n(self) -> int:
        return self.a + self.b + self.c + self.d


@dataclass(frozen=True)
class McNemarResult:
    """Discordant counts, the two-sided p-value, the method used and (chi-square only) the statistic."""

    b: int
    c: int
    p_value: float
    method: str  # "exact_binomial" or "chi2_continuity"
    statistic: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_test(b: int, c: int, *, exact_below: int = EXACT_BELOW) -> McNemarResult:
    """McNemar's two-sided test from the discordant counts ``b`` (right→wrong) and ``c`` (wrong→right).

    Exact binomial when ``b + c < exact_below`` (default 25), else continuity-corrected chi-square (df 1).
    ``b + c == 0`` gives ``p = 1`` (no evidence either way).

    >>> round(mcnemar_test(1, 5).p_value, 2), round(mcnemar_test(2, 4).p_value, 2), round(mcnemar_test(2, 10).p_value, 2)
    (0.22, 0.69, 0.04)
    """
    from scipy.stats import binomtest, chi2

    for name, value in (("b", b), ("c", c)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected a non-negative integer count, got {value!r}")
    n = b + c
    if n == 0:
        return McNemarResult(b, c, 1.0, "exact_binomial")
    if n < exact_below:
        p = binomtest(b, n, 0.5, alternative="two-sided").pvalue
        return McNemarResult(b, c, float(min(1.0, p)), "exact_binomial")
    statistic = (abs(b - c) - 1) ** 2 / n
    return McNemarResult(b, c, float(chi2.sf(statistic, df=1)), "chi2_continuity", float(statistic))


def paired_table(before: Mapping[Hashable, bool], after: Mapping[Hashable, bool]) -> PairedTable:
    """The paired 2×2 table of two runs over the same item ids.

    ``ValueError`` listing (up to five of) the ids present in only one run: McNemar needs every item in both.
    """
    only_before = [k for k in before if k not in after]
    only_after = [k for k in after if k not in before]
    if only_before or only_after:
        parts = []
        if only_before:
            parts.append(f"{len(only_before)} id(s) only in before (e.g. {only_before[:5]})")
        if only_after:
            parts.append(f"{len(only_after)} id(s) only in after (e.g. {only_after[:5]})")
        raise ValueError("unpaired items: " + "; ".join(parts))
    a = b = c = d = 0
    for key, was in before.items():
        now = after[key]
        if was and now:
            a += 1
        elif was:
            b += 1
        elif now:
            c += 1
        else:
            d += 1
    return PairedTable(a, b, c, d)


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    return None


def load_outcomes(path: str | os.PathLike[str], key: str = "correct", id_field: str = "id") -> dict[Hashable, bool]:
    """Per-item outcomes from a JSONL file of rows ``{"id": …, <key>: true/false}`` (1/0 accepted).

    ``ValueError`` naming the file, line and field for unreadable JSON, a missing ``id`` or ``key``, a non-boolean
    outcome, or a duplicated id.
    """
    outcomes: dict[Hashable, bool] = {}
    for number, row in iter_jsonl(path, require_object=False):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected an object with {id_field!r} and {key!r}")
        if id_field not in row:
            raise ValueError(f"{path}:{number}: missing field {id_field!r}")
        if key not in row:
            raise ValueError(f"{path}:{number}: missing field {key!r} (choose the outcome field with --key)")
        item = row[id_field]
        if isinstance(item, (list, dict)) or (isinstance(item, float) and math.isnan(item)):
            raise ValueError(f"{path}:{number}: field {id_field!r} must be a string or number, got {item!r}")
        outcome = _as_bool(row[key])
        if outcome is None:
            raise ValueError(f"{path}:{number}: field {key!r} must be true/false (or 1/0), got {row[key]!r}")
        if item in outcomes:
            raise ValueError(f"{path}:{number}: duplicate {id_field} {item!r}")
        outcomes[item] = outcome
    return outcomes


def mcnemar_from_files(
    before: str | os.PathLike[str], after: str | os.PathLike[str], key: str = "correct", id_field: str = "id"
) -> tuple[PairedTable, McNemarResult]:
    """Read two outcome JSONL files, pair them by id and run :func:`mcnemar_test` on the discordant counts."""
    table = paired_table(load_outcomes(before, key, id_field), load_outcomes(after, key, id_field))
    return table, mcnemar_test(table.b, table.c)


__all__ = [
    "EXACT_BELOW",
    "McNemarResult",
    "PairedTable",
    "load_outcomes",
    "mcnemar_from_files",
    "mcnemar_test",
    "paired_table",
]
