"""Official scoring rules of the reasoning benchmarks, on answers read by :mod:`perception_r1.eval.answers`.

- **MathVista**: a choice answer is the option (letter -> option text, as the official normaliser maps it);
  integers compare as ``int(float(x))``; floats after rounding to the item's ``precision``; lists element-wise.
  Breakdowns by question type, answer type, task, context, grade, source and skill, like the official table.
- **We-Math**: per-question accuracy (one-step S1, two-step S2, three-step S3) and the four-dimensional metrics
  on complete problem groups: IK (a sub-problem wrong and the composite wrong), IG (all sub-problems right,
  composite wrong), CM and RM in their strict and loose forms, and the final scores
  ``(N - 0.5·IG - RM - IK) / N``; RM is also reported as ``RM / (RM + CM)`` as the official script does.
- **MathVerse**, **MATH-Vision**: option letters for choice questions; free-form answers equal numerically or by
  math-verify equivalence. Breakdowns by problem version / subject and level.
- **MMMU**, **MMMU-Pro**: option letters; MMMU open questions as the official ``eval_open``: a numeric gold
  matches a number rounded to 2 decimals, a text gold matches when contained in the normalised answer.

Deviations, documented in docs/eval.md: an unreadable answer scores 0 (the official scripts map it to the most
similar option or a random one); MathVista floats compare by value after rounding (so ``"1.50"`` gold and
``1.5`` agree).
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..judge.client import JudgeClient
from .answers import Extraction, extract_all, extraction_report, normalize_text, parse_number
from .benchmarks.base import BenchmarkItem

_NUMBERS = re.compile(r"-?\d+(?:\.\d+)?")


def _numbers(text: str) -> list[float]:
    return [float(x) for x in _NUMBERS.findall(text.replace(",", " , ").replace("−", "-"))]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _verify(gold: str, pred: str) -> bool:
    """math-verify equivalence (call from a main thread: its timeouts use SIGALRM)."""
    from ..rewards.math_answer import MATH_TIMEOUT_S, verify_answer

    try:
        return verify_answer(gold, pred, timeout_s=MATH_TIMEOUT_S) == 1.0
    except Exception:  # a parser bug on odd LaTeX must not stop a scoring run
        return False


def is_correct(item: BenchmarkItem, answer: str | None) -> bool:
    """Whether ``answer`` (as extracted) is right for ``item`` under its benchmark's rules; ``None`` is wrong."""
    if answer is None:
        return False
    kind = item.answer_type
    if kind == "choice":  # compared as option texts (MathVista's rule: identical options are one answer)
        letter = answer.strip().upper()
        letters = item.letters
        if letter not in letters:
            return False
        return letter == item.answer or item.choices[letters.index(letter)] == item.choices[letters.index(item.answer)]
    if kind == "integer":  # MathVista: str(int(float(x)))
        value = parse_number(answer)
        return value is not None and int(value) == int(float(item.answer))
    if kind == "float":  # MathVista: round to the item's precision
        value = parse_number(answer)
        digits = item.precision if item.precision is not None else 2
        return value is not None and round(value, digits) == round(float(item.answer), digits)
    if kind == "list":
        gold, pred = _numbers(item.answer), _numbers(answer)
        return bool(gold) and len(gold) == len(pred) and all(_close(a, b) for a, b in zip(gold, pred, strict=True))
    if kind == "number":
        value = parse_number(answer)
        return value is not None and _close(value, float(item.answer))
    if kind == "text" and item.benchmark in ("mmmu", "mmmu_pro"):
        return _mmmu_open(item.answer, answer)
    if kind == "text":
        return normalize_text(answer) == normalize_text(item.answer)
    # free-form expression (MathVerse, MATH-Vision): numbers, exact text, then math-verify
    gold_value, pred_value = parse_number(item.answer), parse_number(answer)
    if gold_value is not None and pred_value is not None:
        return _close(gold_value, pred_value)
    if normalize_text(answer) == normalize_text(item.answer):
        return True
    return _verify(item.answer, answer)


def _mmmu_open(gold: str, answer: str) -> bool:
    golds: list[Any] = [gold]
    if gold.strip().startswith("["):
        try:
            parsed = ast.literal_eval(gold)
            golds = list(parsed) if isinstance(parsed, (list, tuple)) else [gold]
        except (ValueError, SyntaxError):
            golds = [gold]
    pred_numbers = [round(x, 2) for x in _numbers(answer)]
    norm_answer = normalize_text(answer)
    for g in golds:
        text = str(g)
        value = parse_number(text)
        if value is not None and re.fullmatch(r"\s*-?[\d.,]+\s*%?\s*", text):
            if round(value, 2) in pred_numbers:
                return True
        elif normalize_text(text) and normalize_text(text) in norm_answer:
            return True
    return False


# ------------------------------------------------------------------ aggregation


def _acc(flags: list[bool]) -> dict[str, Any]:
    return {"n": len(flags), "correct": sum(flags), "accuracy": sum(flags) / len(flags) if flags else 0.0}


_BREAKDOWNS = {
    "mathvista": ("question_type", "answer_type", "task", "context", "grade", "source", "skills"),
    "mathverse": ("problem_version", "subject"),
    "mathvision": ("subject", "level"),
    "wemath": ("key", "knowledge_concept"),
    "mmmu": ("subject", "difficulty"),
    "mmmu_pro": ("subject", "difficulty"),
}


def breakdowns(benchmark: str, items: Iterable[BenchmarkItem], correct: Mapping[str, bool]) -> dict[str, Any]:
    """Accuracy per category value for the benchmark's official breakdown fields (multi-valued fields split)."""
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        if item.id not in correct:
            continue
        for name in _BREAKDOWNS.get(benchmark, ()):
            value = item.meta.get(name)
            values = value if isinstance(value, list) else [value]
            for v in values:
                if v is not None and v != "":
                    groups[name][str(v)].append(correct[item.id])
    return {name: {k: _acc(v) for k, v in sorted(values.items())} for name, values in groups.items()}


def wemath_metrics(items: Iterable[BenchmarkItem], correct: Mapping[str, bool]) -> dict[str, Any]:
    """We-Math's four-dimensional metrics (strict and loose) and S1/S2/S3 accuracy on complete groups.

    A group is complete when every one of its sub-problems (``Nsteps_1`` … ``Nsteps_N``) and its composite
    (``Nsteps_multi``) has a result; incomplete groups are counted in ``incomplete_groups`` and left out.
    """
    groups: dict[str, dict[str, bool]] = defaultdict(dict)
    steps_of: dict[str, int] = {}
    for item in items:
        if item.id in correct:
            groups[item.meta["group"]][item.meta["step"]] = correct[item.id]
            steps_of[item.meta["group"]] = item.meta["steps"]
    counts = dict.fromkeys(("IK", "IG", "CM_strict", "CM_loose", "RM_strict", "RM_loose"), 0)
    one_step: list[bool] = []
    multi: dict[int, list[bool]] = {2: [], 3: []}
    complete = incomplete = 0
    for group, results in groups.items():
        steps = steps_of[group]
        needed = [str(k) for k in range(1, steps + 1)] + ["multi"]
        if any(k not in results for k in needed):
            incomplete += 1
            continue
        complete += 1
        subs = [results[str(k)] for k in range(1, steps + 1)]
        composite = results["multi"]
        one_step.extend(subs)
        multi[steps].append(composite)
        if composite:
            counts["CM_strict" if all(subs) else "RM_strict"] += 1
            counts["CM_loose" if any(subs) else "RM_loose"] += 1
        else:
            counts["IG" if all(subs) else "IK"] += 1
    n = complete
    out: dict[str, Any] = {"groups": n, "incomplete_groups": incomplete, "counts": counts}
    if n:
        out["rates"] = {
            "IK": counts["IK"] / n,
            "IG": counts["IG"] / n,
            "CM_strict": counts["CM_strict"] / n,
            "CM_loose": counts["CM_loose"] / n,
            "RM_strict": _ratio(counts["RM_strict"], counts["CM_strict"] + counts["RM_strict"]),
            "RM_loose": _ratio(counts["RM_loose"], counts["CM_loose"] + counts["RM_loose"]),
        }
        out["score_strict"] = (n - 0.5 * counts["IG"] - counts["RM_strict"] - counts["IK"]) / n
        out["score_loose"] = (n - 0.5 * counts["IG"] - counts["RM_loose"] - counts["IK"]) / n
        out["S1"] = _acc(one_step)["accuracy"]
        out["S2"] = _acc(multi[2])["accuracy"] if multi[2] else None
        out["S3"] = _acc(multi[3])["accuracy"] if multi[3] else None
    return out


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def coverage(items: Iterable[BenchmarkItem], answered: Iterable[str]) -> dict[str, Any]:
    """How much of the benchmark a predictions file covers: the fields every eval summary carries.

    ``n`` is the number of benchmark items (the denominator of every metric: an item without a prediction is a
    miss), ``answered`` how many have a prediction, ``missing`` the rest, ``coverage`` ``answered / n``, and
    ``items_sha256`` a digest of the sorted item ids so ``eval report`` can tell two item sets apart.

    >>> from perception_r1.eval.benchmarks.base import BenchmarkItem as B
    >>> items = [B(id=str(i), benchmark="x", prompt="q", answer="1", answer_type="number") for i in range(4)]
    >>> c = coverage(items, ["0", "2"]); (c["n"], c["answered"], c["missing"], c["coverage"])
    (4, 2, 2, 0.5)
    """
    ids = [item.id for item in items]
    done = set(answered)
    k = sum(1 for i in ids if i in done)
    digest = hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()[:16]
    return {
        "n": len(ids),
        "answered": k,
        "missing": len(ids) - k,
        "coverage": k / len(ids) if ids else 0.0,
        "items_sha256": digest,
    }


def summarize(
    benchmark: str, items: Iterable[BenchmarkItem], extractions: Mapping[str, Extraction]
) -> tuple[dict[str, Any], dict[str, bool]]:
    """``(summary, correct_by_id)`` over every item; an item without an extraction (no prediction) is wrong.

    The summary holds ``accuracy`` and ``correct`` over all ``n`` items, the :func:`coverage` fields
    (``answered``, ``missing``, ``coverage``, ``items_sha256``), the extraction report of the answered items, the
    official breakdowns, and We-Math's four-dimensional metrics.
    """
    items = list(items)
    correct = {i.id: i.id in extractions and is_correct(i, extractions[i.id].answer) for i in items}
    summary: dict[str, Any] = {
        "benchmark": benchmark,
        **_acc(list(correct.values())),
        **coverage(items, extractions),
        "extraction": extraction_report(extractions[i.id] for i in items if i.id in extractions),
        "breakdowns": breakdowns(benchmark, items, correct),
    }
    if benchmark == "wemath":
        summary["wemath"] = wemath_metrics(items, correct)
    return summary, correct


async def score_predictions(
    items: Iterable[BenchmarkItem],
    predictions: Mapping[str, str],
    judge: JudgeClient | None = None,
    on_done: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Extract (rules, then the judge for what they cannot read) and score every prediction of one benchmark.

    Returns ``(summary, rows)``; one row per benchmark item, ``{id, correct, extracted, method, gold}``, where an
    item without a prediction is ``correct: false, method: "missing"`` (a miss, as in the perception scorer).
    Predictions whose id is not a benchmark item raise ``ValueError`` (a mixed-up file must not score silently).
    """
    items = list(items)
    by_id = {item.id: item for item in items}
    unknown = [i for i in predictions if i not in by_id]
    if unknown:
        raise ValueError(f"{len(unknown)} prediction id(s) are not in the benchmark, e.g. {unknown[:3]}")
    benchmark = items[0].benchmark if items else ""
    extractions = await extract_all(by_id, predictions, judge, on_done)
    summary, correct = summarize(benchmark, items, extractions)
    rows = [
        {
            "id": item.id,
            "correct": correct[item.id],
            "extracted": extractions[item.id].answer if item.id in extractions else None,
            "method": extractions[item.id].method if item.id in extractions else "missing",
            "gold": item.answer,
        }
        for item in items
    ]
    return summary, rows


# ------------------------------------------------------------------ perception benchmarks


def score_perception(
    items: Iterable[BenchmarkItem],
    predictions: Mapping[str, str],
    settings: Mapping[str, Any] | None = None,
    annotations: str | None = None,
    score_mode: str = "constant",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score perception benchmark predictions with :mod:`perception_r1.eval.perception_metrics`.

    ``settings`` are the perception run settings (``coord_frame``, ``thinking``…, as ``--set`` in training).
    RefCOCO: Acc@0.5/0.75/0.95 and their mean; PixMo-Count: exact-count accuracy; PageOCR: edit distance, F1,
    precision, recall, BLEU, METEOR; COCO detection: pycocotools AP/AR against ``annotations`` (the instances
    JSON the parquet was built from; boxes score 1.0, or ``1/(rank+1)`` with ``score_mode="order"``).
    Returns ``(summary, rows)`` like :func:`score_predictions`; items without a prediction count as misses.
    """
    from ..rewards.boxes import PerceptionSettings, settings_for_row, split_answer
    from ..rewards.registry import build_settings
    from . import perception_metrics as pm

    items = list(items)
    by_id = {item.id: item for item in items}
    unknown = [i for i in predictions if i not in by_id]
    if unknown:
        raise ValueError(f"{len(unknown)} prediction id(s) are not in the benchmark, e.g. {unknown[:3]}")
    benchmark = items[0].benchmark if items else ""
    perception = build_settings(PerceptionSettings, dict(settings or {}))
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"benchmark": benchmark}
    if benchmark == "refcoco":
        ious = []
        for item in items:
            response = predictions.get(item.id, "")
            size = item.meta["extra_info"].get("image_size")
            row_settings = settings_for_row(perception, item.meta["extra_info"])  # the frame the row was built for
            iou = pm.grounding_iou_from_response(response, item.meta["ground_truth"], size, row_settings)
            ious.append(iou)
            rows.append({"id": item.id, "iou": iou, "correct": iou >= 0.5})
        summary.update(pm.grounding_accuracy(ious))
    elif benchmark == "pixmo_count":
        counts = [pm.count_from_response(predictions.get(i.id, ""), perception) for i in items]
        truth = [int(i.meta["ground_truth"]) for i in items]
        summary.update(pm.counting_accuracy(counts, truth))
        rows = [
            {"id": i.id, "predicted": c, "gold": t, "correct": c == t}
            for i, c, t in zip(items, counts, truth, strict=True)
        ]
    elif benchmark == "pageocr":
        texts = [split_answer(predictions.get(i.id, ""), perception.thinking)[0] for i in items]
        summary.update(pm.ocr_metrics(texts, [str(i.meta["ground_truth"]) for i in items]))
        rows = [
            {"id": i.id, **pm.ocr_page_metrics(t, str(i.meta["ground_truth"]))}
            for i, t in zip(items, texts, strict=True)
        ]
    elif benchmark == "coco_detection":
        if annotations is None:
            raise ValueError("coco_detection: pass the COCO instances JSON (--annotations) the parquet was built from")
        gt = json.loads(Path(annotations).read_text(encoding="utf-8"))
        category_ids = {c["name"]: c["id"] for c in gt.get("categories", [])}
        results: list[dict[str, Any]] = []
        for item in items:
            extra = item.meta["extra_info"]
            found, skipped = pm.detections_from_response(
                predictions.get(item.id, ""),
                int(extra["image_id"]),
                extra["image_size"],
                category_ids,
                settings_for_row(perception, extra),
                score_mode=score_mode,  # type: ignore[arg-type]
            )
            results.extend(found)
            rows.append({"id": item.id, "image_id": int(extra["image_id"]), "boxes": len(found), "skipped": skipped})
        image_ids = sorted({int(i.meta["extra_info"]["image_id"]) for i in items})
        summary.update(pm.coco_detection_metrics(gt, results, image_ids=image_ids))
    else:
        raise ValueError(f"{benchmark!r} is not a perception benchmark")
    summary.update(coverage(items, predictions))  # n = every item: a missing prediction scored as a miss above
    return summary, rows
