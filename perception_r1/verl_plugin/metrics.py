"""Per-step training metrics from the reward components (pure: no verl, no I/O).

The reward manager returns, for every trajectory, ``reward_extra_info`` with the same keys: ``score``, each
task component (``format``, ``accuracy``, ``visual``, ...), ``judge_failed``, ``judge_latency_s`` and
``scoring_error``; a key a row's task does not have is ``None``. :func:`reward_metrics` turns one step's rows
into the scalars the trainer logs:

- ``reward/<component>/mean``: mean over the rows where the component is not ``None`` (a row without
  annotations has ``visual = None`` and is left out of ``reward/visual/mean``);
- ``reward/judge_failure_rate``: failed judge calls / judged rows (a judged row either failed, or succeeded and
  has a latency); absent when no row of the step needed the judge;
- ``reward/judge_latency_p50`` / ``reward/judge_latency_p95``: seconds, over successful judge calls;
- ``reward/scoring_error_rate``: rows the manager could not score at all (bad data, a scorer bug).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

PREFIX = "reward"
JUDGE_FAILED = "judge_failed"
JUDGE_LATENCY = "judge_latency_s"
SCORING_ERROR = "scoring_error"
BOOKKEEPING_KEYS = frozenset({JUDGE_FAILED, JUDGE_LATENCY, SCORING_ERROR})
"""Extra-info keys that are counters, not reward components: they get rates/percentiles, not means."""


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` for ``None``/non-numbers/NaN (NaN never reaches a metric)."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def reward_metrics(infos: Iterable[Mapping[str, Any] | None], prefix: str = PREFIX) -> dict[str, float]:
    """Aggregate one step's per-trajectory ``reward_extra_info`` dicts into logger scalars (see module doc).

    >>> reward_metrics([{"score": 1.0, "visual": None, "judge_failed": 0, "judge_latency_s": None},
    ...                 {"score": 0.5, "visual": 0.5, "judge_failed": 0, "judge_latency_s": 0.2}])
    {'reward/score/mean': 0.75, 'reward/visual/mean': 0.5, 'reward/judge_failure_rate': 0.0, \
'reward/judge_latency_p50': 0.2, 'reward/judge_latency_p95': 0.2}
    """
    values: dict[str, list[float]] = {}
    failed = succeeded = errors = rows = 0
    latencies: list[float] = []
    for info in infos:
        if not isinstance(info, Mapping):
            continue
        rows += 1
        for key, raw in info.items():
            if key in BOOKKEEPING_KEYS:
                continue
            number = _number(raw)
            if number is not None:
                values.setdefault(str(key), []).append(number)
        latency = _number(info.get(JUDGE_LATENCY))
        if _number(info.get(JUDGE_FAILED)) == 1.0:
            failed += 1
        elif latency is not None:
            succeeded += 1
            latencies.append(latency)
        if _number(info.get(SCORING_ERROR)) == 1.0:
            errors += 1

    metrics: dict[str, float] = {}
    for key in sorted(values, key=lambda k: (k != "score", k)):
        metrics[f"{prefix}/{key}/mean"] = float(np.mean(values[key]))
    if failed + succeeded:
        metrics[f"{prefix}/judge_failure_rate"] = failed / (failed + succeeded)
    if latencies:
        p50, p95 = np.percentile(np.asarray(latencies, dtype=float), [50, 95])
        metrics[f"{prefix}/judge_latency_p50"] = float(p50)
        metrics[f"{prefix}/judge_latency_p95"] = float(p95)
    if errors:
        metrics[f"{prefix}/scoring_error_rate"] = errors / rows
    return metrics


def reward_infos_from_extra_fields(
    extra_fields: Sequence[Any], padding: Sequence[bool] | None = None
) -> list[Mapping[str, Any]]:
    """The ``reward_extra_info`` dicts out of verl's per-sample ``extra_fields`` (TransferQueue), skipping padding.

    verl's agent loop stores each trajectory's reward manager output as ``extra_fields["reward_extra_info"]``.
    """
    infos: list[Mapping[str, Any]] = []
    for index, fields in enumerate(extra_fields):
        if padding is not None and padding[index]:
            continue
        info = fields.get("reward_extra_info") if isinstance(fields, Mapping) else None
        if isinstance(info, Mapping):
            infos.append(info)
    return infos
