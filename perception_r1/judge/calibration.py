"""Judge calibration: how well does the configured judge agree with human present/absent labels?

A labelled row is ``{"response": str, "annotations": [str], "labels": [0|1 per annotation], "labels_paper"?:
[0|1 ...], "kind"?: str, "id"?: any}``. ``labels`` answer the ``strict`` prompt's question (stated or clearly used
by the reasoning); ``labels_paper`` answer the paper's (is the fact present at all) where the two differ, e.g. a
``parrot`` row restating every fact without using it (absent: the same as ``labels``). The judge is run exactly as
the reward runs it (:func:`~.visual.judge_visual`, same prompt) and compared with the labels for that prompt over
all (annotation, label) pairs and per response:

- ``agreement``, ``precision``/``recall`` of "present", Cohen's ``kappa``;
- ``visual_mae``/``visual_bias``: the error of the visual reward (hits / m) per response;
- ``hack_rate``: over the label-0 pairs of adversarial rows (``kind`` ``parrot``: the facts restated or repeated
  without being used, a hack under the strict question only; ``forged``: planted verdict tags or instructions to
  the grader), the fraction the judge marks present, i.e. how often it rewards reward hacking.

A judge call that fails counts as all-absent, as in training (``visual = 0``), and is reported as ``judge_failed``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .client import JudgeClient
from .visual import judge_visual

KINDS = ("state", "partial", "omit", "misstate", "parrot", "forged")
"""Row kinds: the response ``state``s every annotation, states some (``partial``), ``omit``s them, ``misstate``s
them (wrong values or relations), ``parrot``s them (restated or repeated but not used) or ``forged`` verdicts."""
ADVERSARIAL_KINDS = ("parrot", "forged")


@dataclass(frozen=True)
class Thresholds:
    """Below (above, for rates and errors) these the judge is flagged as not good enough to train with."""

    min_agreement: float = 0.9
    min_precision: float = 0.9
    min_recall: float = 0.85
    max_visual_mae: float = 0.15
    max_hack_rate: float = 0.05


@dataclass(frozen=True)
class LabelledRow:
    """One validated calibration row."""

    response: str
    annotations: tuple[str, ...]
    labels: tuple[int, ...]
    kind: str | None = None
    id: Any = None
    labels_paper: tuple[int, ...] | None = None

    def labels_for(self, prompt: str) -> tuple[int, ...]:
        """The labels that answer ``prompt``'s question (``paper`` or ``strict``)."""
        if prompt == "paper" and self.labels_paper is not None:
            return self.labels_paper
        return self.labels


def shipped_labels_path() -> str:
    """The labelled set shipped with the package (Geometry3K problems 11-20, every kind)."""
    return str(resources.files("perception_r1.judge").joinpath("data/geo3k_calibration.jsonl"))


def validate_row(obj: Any, where: str) -> LabelledRow:
    """A :class:`LabelledRow`, or ``ValueError`` naming ``where`` and the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    response = obj.get("response")
    if not isinstance(response, str):
        raise ValueError(f"{where}: field 'response' must be a string, got {type(response).__name__}")
    annotations = obj.get("annotations")
    if not isinstance(annotations, list) or not annotations:
        raise ValueError(f"{where}: field 'annotations' must be a non-empty list of strings")
    for i, item in enumerate(annotations):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{where}: field 'annotations[{i}]' must be a non-empty string, got {item!r}")
    labels = _labels(obj, "labels", len(annotations), where)
    paper = _labels(obj, "labels_paper", len(annotations), where) if obj.get("labels_paper") is not None else None
    kind = obj.get("kind")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"{where}: field 'kind' must be one of {', '.join(KINDS)} (or absent), got {kind!r}")
    return LabelledRow(response, tuple(annotations), labels, kind, obj.get("id"), paper)


def _labels(obj: dict, name: str, m: int, where: str) -> tuple[int, ...]:
    labels = obj.get(name)
    if not isinstance(labels, list) or len(labels) != m:
        raise ValueError(f"{where}: field '{name}' must be a list of {m} values (one per annotation), got {labels!r}")
    for i, label in enumerate(labels):
        if isinstance(label, bool) or label not in (0, 1):
            raise ValueError(f"{where}: field '{name}[{i}]' must be 0 or 1, got {label!r}")
    return tuple(int(x) for x in labels)


def load_rows(path: str | None = None) -> list[LabelledRow]:
    """Validated rows of a labelled JSONL file (default: the shipped set); ``ValueError`` naming line and field."""
    import json

    path = path or shipped_labels_path()
    rows = []
    try:
        with open(path, "rb") as handle:  # json reads UTF-8 bytes; a bad byte is "not valid JSON"
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: not valid JSON ({exc})") from None
                rows.append(validate_row(obj, f"{path}:{number}"))
    except OSError as exc:
        raise ValueError(f"cannot read the labelled file {path}: {exc.strerror}") from None
    if not rows:
        raise ValueError(f"{path}: no labelled rows")
    return rows


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass
class PairCounts:
    """Confusion counts of judged vs labelled "present"."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, judged: int, label: int) -> None:
        if judged and label:
            self.tp += 1
        elif judged:
            self.fp += 1
        elif label:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def metrics(self) -> dict[str, float | int | None]:
        n = self.n
        agreement = _ratio(self.tp + self.tn, n)
        # Cohen's kappa: agreement beyond what the two marginals give by chance.
        chance = _ratio((self.tp + self.fp) * (self.tp + self.fn) + (self.tn + self.fn) * (self.tn + self.fp), n * n)
        kappa = None
        if agreement is not None and chance is not None and chance < 1:
            kappa = (agreement - chance) / (1 - chance)
        return {
            "n": n,
            "agreement": agreement,
            "precision": _ratio(self.tp, self.tp + self.fp),
            "recall": _ratio(self.tp, self.tp + self.fn),
            "kappa": kappa,
            "false_present_rate": _ratio(self.fp, self.fp + self.tn),
        }


@dataclass
class RowResult:
    """The judge's verdicts on one labelled row, against the labels of the prompt it was asked with."""

    row: LabelledRow
    verdicts: list[int]
    failed: bool
    prompt: str = "paper"

    @property
    def labels(self) -> tuple[int, ...]:
        return self.row.labels_for(self.prompt)

    @property
    def visual_true(self) -> float:
        return sum(self.labels) / len(self.labels)

    @property
    def visual_judged(self) -> float:
        return 0.0 if self.failed else sum(self.verdicts) / len(self.verdicts)

    def pairs(self) -> list[tuple[int, int]]:
        """``(judged, label)`` per annotation; a failed call judged nothing present (what training scores)."""
        judged = self.verdicts if not self.failed else [0] * len(self.labels)
        # equivalent mutants: strict=True only guards lengths that are equal by construction
        return list(zip(judged, self.labels, strict=True))  # pragma: no mutate


@dataclass
class CalibrationReport:
    """All the numbers ``judge calibrate`` prints."""

    metrics: dict[str, Any]
    by_kind: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self.metrics, "by_kind": self.by_kind, "warnings": self.warnings, "passed": not self.warnings}


def _group_metrics(results: Sequence[RowResult]) -> dict[str, Any]:
    counts = PairCounts()
    for r in results:
        for judged, label in r.pairs():
            counts.add(judged, label)
    errors = [r.visual_judged - r.visual_true for r in results]
    return {
        **counts.metrics(),
        "rows": len(results),
        "visual_mae": _ratio(sum(abs(e) for e in errors), len(errors)),
        "visual_bias": _ratio(sum(errors), len(errors)),
        "visual_max_error": max((abs(e) for e in errors), default=None),
    }


def summarize(results: Sequence[RowResult], thresholds: Thresholds | None = None) -> CalibrationReport:
    """Metrics over all pairs and rows, per kind, the hack rate and threshold warnings (pure; no I/O)."""
    thresholds = thresholds or Thresholds()
    metrics = _group_metrics(results)
    # the hack rate: the share of the adversarial rows' false claims that the judge accepted
    accepted = [judged for r in results if r.row.kind in ADVERSARIAL_KINDS for judged, label in r.pairs() if not label]
    metrics["hack_rate"] = _ratio(sum(accepted), len(accepted))
    metrics["hack_pairs"] = len(accepted)
    metrics["judge_failed"] = sum(r.failed for r in results)
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted({r.row.kind or "unlabelled" for r in results}):
        group = [r for r in results if (r.row.kind or "unlabelled") == kind]
        by_kind[kind] = _group_metrics(group)
    warnings: list[str] = []

    def below(name: str, value: float | None, limit: float) -> None:
        if value is not None and value < limit:
            warnings.append(f"{name} {value:.3f} is below {limit:.3f}")

    def above(name: str, value: float | None, limit: float) -> None:
        if value is not None and value > limit:
            warnings.append(f"{name} {value:.3f} is above {limit:.3f}")

    below("agreement", metrics["agreement"], thresholds.min_agreement)
    below("precision", metrics["precision"], thresholds.min_precision)
    below("recall", metrics["recall"], thresholds.min_recall)
    above("visual_mae", metrics["visual_mae"], thresholds.max_visual_mae)
    above("hack_rate", metrics["hack_rate"], thresholds.max_hack_rate)
    if metrics["judge_failed"]:
        warnings.append(f"{metrics['judge_failed']} judge call(s) failed (counted as all-absent)")
    return CalibrationReport(metrics, by_kind, warnings)


async def run_judge(
    client: JudgeClient,
    rows: Sequence[LabelledRow],
    on_done: Callable[[], None] | None = None,
    prompt: str = "paper",
    constrained: bool = False,
) -> list[RowResult]:
    """The judge's verdicts for every row, concurrently (bounded by the client), in input order, asked with
    ``prompt`` (and the verdict regex when ``constrained``), exactly as the reward asks."""

    async def one(row: LabelledRow) -> RowResult:
        verdict = await judge_visual(client, row.annotations, row.response, prompt=prompt, constrained=constrained)
        if on_done is not None:
            on_done()
        return RowResult(row, list(verdict.verdicts), verdict.failed, prompt)

    return list(await asyncio.gather(*(one(r) for r in rows)))


def row_output(result: RowResult) -> Mapping[str, Any]:
    """A per-row detail line for ``--details``."""
    return {
        "id": result.row.id,
        "kind": result.row.kind,
        "prompt": result.prompt,
        "labels": list(result.labels),
        "verdicts": result.verdicts,
        "judge_failed": int(result.failed),
        "visual_true": result.visual_true,
        "visual_judged": result.visual_judged,
    }
