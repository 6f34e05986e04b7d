"""How many rows each difference from the original code changes (the numbers of docs/fidelity.md).

Comparison sets (all shipped or in ``../shared/data``, so the counts are reproducible):

- **geo3k**: the 60 responses of ``perception_r1/judge/data/geo3k_calibration.jsonl`` with their Geometry3K answers,
  each also rewritten the ways a policy writes before and while it learns the template: no answer block (the box
  in the text), cut off before ``</answer>``, an answer block without ``\\boxed`` (a sentence, a bare value), an
  ``\\fbox``, an empty ``<think>`` block, a trailing newline, a ``<perception>`` block first: 540 rows.
- **perception**: the candidate outputs of ``benchmarks/bench_reward_metric_agreement.py`` on real COCO objects,
  COCO images and OCR pages (correct answers and their perturbations, in the paper's model syntax): 1,000 rows.

Each difference is isolated: a *faithful re-statement* of the original rule (written here from reading
tongxiao2002/Perception-R1 and linkangheng/PR1, not copied) is swapped for ours one piece at a time, and the rows
whose ``score`` changes are counted. ``preset=paper`` vs the defaults is counted the same way.

    python benchmarks/fidelity_comparison.py            # prints the table (about 20 s)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CALIBRATION = REPO / "perception_r1" / "judge" / "data" / "geo3k_calibration.jsonl"

# ------------------------------------------------------------------ re-statements of the original rules

# tongxiao2002/Perception-R1, verl/utils/reward_score/boxed_math_verify.py: the format regexes and the accuracy rule
ORIGINAL_FORMAT = re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\\boxed{.+?}.*?\n</answer>$", re.DOTALL)
ORIGINAL_ANSWER = re.compile(r"<answer>(.*?)</answer>")  # no DOTALL: a block spanning lines is not found


def original_answer_text(response: str) -> str:
    """What the original hands math-verify: a one-line answer block, else the whole response."""
    match = ORIGINAL_ANSWER.search(response)
    return match.group(1).strip() if match else response.strip()


def parse_plain(text: str) -> list:
    """math-verify's ``parse`` with its default extraction (what the original calls on both sides)."""
    from math_verify import parse

    try:
        return parse(text)
    except Exception:  # the original swallows every error as accuracy 0
        return []


def parse_gold_ours(text: str) -> list:
    """Our ground-truth reading: boxed first (``2\\sqrt{3}`` is 2√3), then plain text."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return parse(f"\\boxed{{{text}}}", extraction_config=configs) or parse(text, extraction_config=configs)


def verified(gold: list, pred: list) -> float:
    from math_verify import verify

    try:
        return 1.0 if gold and pred and verify(gold, pred) else 0.0
    except Exception:
        return 0.0


def accuracy(response: str, truth: str, source: str, gold: str) -> float:
    """Accuracy with the answer read the ``source`` way and the ground truth the ``gold`` way (original / ours)."""
    from perception_r1.rewards.math_answer import _parse_boxed, _parse_plain, answer_candidate

    gold_parsed = parse_plain(truth.strip()) if gold == "original" else parse_gold_ours(truth)
    if source == "original":
        return verified(gold_parsed, parse_plain(original_answer_text(response)))
    candidate = answer_candidate(response)
    if candidate is None:
        return 0.0
    kind, text = candidate  # ours: one expression, and free text too for an unboxed block (verify_answer's rule)
    pred = list(_parse_boxed(text, 5)) + (list(_parse_plain(text, 5)) if kind == "block" else [])
    return verified(gold_parsed, pred)


# linkangheng/PR1, src/open_r1/rewards.py + utils.py: the released grounding reward (IoU² of the first box) and its
# format reward, whose unescaped `|` make the pattern an alternation (in effect: "starts with `<`")
ORIGINAL_GROUNDING_FORMAT = re.compile(
    r"^<|object_ref_start|>.*?<|object_ref_end|><|box_start|>.*?<|box_end|><|im_end|>"
)
_NUM = r"(-?\d+(?:\.\d+)?)"
_FIRST_BOX = [
    re.compile(rf"\[\s*{_NUM},\s*{_NUM},\s*{_NUM},\s*{_NUM}\s*\]"),
    re.compile(rf"\(\s*{_NUM},\s*{_NUM},\s*{_NUM},\s*{_NUM}\s*\)"),
    re.compile(rf"\(\s*{_NUM},\s*{_NUM}\),\s*\(\s*{_NUM},\s*{_NUM}\)"),
]


def original_grounding(response: str, gt_thousandths: Sequence[float]) -> float:
    """IoU² of the first four numbers (×1000 unless special tokens mark Qwen2-VL output) + the format reward."""
    text = response.replace("<|endoftext|>", "")
    box = [0.0, 0.0, 0.0, 0.0]
    for pattern in _FIRST_BOX:
        match = pattern.search(text)
        if match:
            box = [float(v) for v in match.groups()]
            break
    if "<|box_start|>" not in text:
        box = [int(v * 1000) for v in box]
    ix = max(0.0, min(box[2], gt_thousandths[2]) - max(box[0], gt_thousandths[0]))
    iy = max(0.0, min(box[3], gt_thousandths[3]) - max(box[1], gt_thousandths[1]))
    inter = ix * iy
    union = (
        (box[2] - box[0]) * (box[3] - box[1])
        + (gt_thousandths[2] - gt_thousandths[0]) * (gt_thousandths[3] - gt_thousandths[1])
        - inter
    )
    iou = inter / union if union > 0 else 0.0
    return iou * iou + (1.0 if ORIGINAL_GROUNDING_FORMAT.match(text) else 0.0)


# ------------------------------------------------------------------ the comparison sets


def geo3k_rows(shared: Path) -> list[dict[str, Any]]:
    """The calibration responses and their rewrites (see the module docstring)."""
    problems = {}
    for line in (shared / "geometry3k" / "problems.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        problems[int(record["id"])] = record["answer"]
    rows = []
    for line in CALIBRATION.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        response, truth = item["response"], problems[int(item["problem_id"])]
        think = response[len("<think>\n") : response.index("\n</think>")]
        answer = re.search(r"\\boxed\{(.*)\}", response).group(1)
        variants = {
            "as shipped": response,
            "no answer block": f"{think}\nSo the answer is \\boxed{{{answer}}}.",
            "cut before </answer>": response[: response.index("\n</answer>")],
            "block: a sentence": f"<think>\n{think}\n</think>\n<answer>\nThe answer is {answer}.\n</answer>",
            "block: a bare value": f"<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>",
            "\\fbox": response.replace("\\boxed{", "\\fbox{"),
            "empty <think>": f"<think>\n\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>",
            "trailing newline": response + "\n",
            "<perception> first": "<perception>\n" + "\n".join(item["annotations"]) + "\n</perception>\n" + response,
        }
        rows += [{"variant": k, "response": v, "truth": truth} for k, v in variants.items()]
    return rows


def perception_rows(shared: Path) -> list[dict[str, Any]]:
    """The agreement benchmark's candidates: ``{data_source, response, ground_truth, extra_info, settings}``."""
    spec = importlib.util.spec_from_file_location(
        "bench_agreement", REPO / "benchmarks" / "bench_reward_metric_agreement.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    out = []
    for task in bench.TASKS:
        for i, row in enumerate(bench.load_rows(task, shared)):
            for family, strength in bench.FAMILIES[task]:
                response = bench.PERTURB[task](row, family, strength, bench._rng(0, task, i, family, strength))
                out.append(
                    {"data_source": task, "response": response, "ground_truth": row.ground_truth,
                     "extra_info": row.extra_info, "settings": bench.FRAMES[task], "family": family}
                )  # fmt: skip
    return out


# ------------------------------------------------------------------ scoring and counting


def geo3k_score(row: dict[str, Any], *, source: str, gold: str, rule: str, template: str = "think") -> float:
    from perception_r1.rewards.format import format_reward

    if rule == "original":
        fmt = 1.0 if ORIGINAL_FORMAT.fullmatch(row["response"]) else 0.0
    else:
        fmt = format_reward(row["response"], template, rule)
    return 0.9 * accuracy(row["response"], row["truth"], source, gold) + 0.1 * fmt


def perception_score(row: dict[str, Any], overrides: dict[str, Any] | None = None) -> float:
    from perception_r1.rewards.registry import build_settings, get_task

    task = get_task(row["data_source"])
    settings = build_settings(task.settings, {**row["settings"], **(overrides or {})})
    components = task.rule_components(row["response"], row["ground_truth"], row["extra_info"], settings)
    return float(task.combine(components, settings))


def previous_counting(row: dict[str, Any]) -> float:
    """This project's previous counting rule: the count of *distinct* points (a repeat counted once)."""
    import numpy as np

    from perception_r1.rewards.boxes import read_prediction
    from perception_r1.rewards.registry import build_settings, get_task

    task = get_task("pixmo_count")
    settings = build_settings(task.settings, row["settings"])
    components = task.rule_components(row["response"], row["ground_truth"], row["extra_info"], settings)
    parsed, _ = read_prediction(row["response"], settings, row["extra_info"]["image_size"], points=True)
    gt = np.asarray(row["ground_truth"], dtype=float).reshape(-1, 2)
    n = (len(np.unique(parsed.coords, axis=0)) if len(parsed) else 0) + parsed.over_cap
    m = len(np.unique(gt, axis=0)) if len(gt) else 0
    components["count"] = float(n == m and (parsed.clean if m == 0 else parsed.syntax is not None))
    return float(task.combine(components, settings))


def previous_grounding_format(row: dict[str, Any]) -> float:
    """This project's previous grounding format: exactly one box."""
    from perception_r1.rewards.registry import build_settings, get_task

    task = get_task("refcoco")
    settings = build_settings(task.settings, row["settings"])
    components = task.rule_components(row["response"], row["ground_truth"], row["extra_info"], settings)
    components["format"] = float(components["format"] == 1.0 and components["n_pred"] + components["over_cap"] == 1)
    return float(task.combine(components, settings))


def changed(rows: Sequence[dict[str, Any]], a: Callable[[dict], float], b: Callable[[dict], float]) -> int:
    return sum(1 for row in rows if abs(a(row) - b(row)) > 1e-9)


def run(repeats: int = 1, shared: Path = SHARED_DATA) -> dict[str, Any]:
    """The counts (``repeats`` is unused: nothing here is timed)."""
    from perception_r1.rewards.boxes import from_original

    geo = geo3k_rows(shared)
    per = perception_rows(shared)
    ground = [r for r in per if r["data_source"] == "refcoco"]
    count = [r for r in per if r["data_source"] == "pixmo_count"]
    det = [r for r in per if r["data_source"] == "coco_detection"]

    original = {"source": "original", "gold": "original", "rule": "original"}
    ours = {"source": "ours", "gold": "ours", "rule": "strict"}
    n_geo, n_per = len(geo), len(per)
    lines = []

    def add(name: str, rows_changed: int, total: int) -> None:
        lines.append((name, rows_changed, total))

    geo_cache: dict[tuple, list[float]] = {}

    def geo_scores(**kw: Any) -> list[float]:
        key = tuple(sorted(kw.items()))
        if key not in geo_cache:
            geo_cache[key] = [geo3k_score(r, **kw) for r in geo]
        return geo_cache[key]

    def geo_changed(a: dict[str, Any], b: dict[str, Any]) -> int:
        return sum(1 for x, y in zip(geo_scores(**a), geo_scores(**b), strict=True) if abs(x - y) > 1e-9)

    add(
        "geo3k: where the answer is read (1, 2, \\fbox)",
        geo_changed({**original, "gold": "ours"}, {**ours, "rule": "original"}),
        n_geo,
    )
    add("geo3k: ground truth read boxed first (bug fix)", geo_changed(original, {**original, "gold": "ours"}), n_geo)
    add("geo3k: format rule strict vs the original regex (7)", geo_changed({**ours, "rule": "original"}, ours), n_geo)
    add(
        "geo3k: format `paper` rule = the original regex",
        geo_changed({**ours, "rule": "original"}, {**ours, "rule": "paper"}),
        n_geo,
    )
    add("geo3k: all of it (original vs our defaults)", geo_changed(original, ours), n_geo)
    add("geo3k: original vs preset=paper", geo_changed(original, {**ours, "rule": "paper"}), n_geo)
    add("geo3k: defaults vs preset=paper", geo_changed(ours, {**ours, "rule": "paper"}), n_geo)

    def released(row: dict[str, Any]) -> float:
        size = row["extra_info"]["image_size"]
        gt = from_original([row["ground_truth"]], "qwen2_vl", size)[0]
        return original_grounding(row["response"], gt.tolist())

    add("grounding: the released reward vs our defaults", changed(ground, released, perception_score), len(ground))
    add(
        "grounding: IoU² (paper) vs IoU",
        changed(ground, perception_score, lambda r: perception_score(r, {"iou_squared": "false"})),
        len(ground),
    )
    add(
        "grounding: a box read (ours now) vs exactly one box (ours before)",
        changed(ground, perception_score, previous_grounding_format),
        len(ground),
    )
    add(
        "counting: repeats counted (5) vs distinct points",
        changed(count, perception_score, previous_counting),
        len(count),
    )
    add(
        "detection: class-aware matching (6) vs class-agnostic",
        changed(det, perception_score, lambda r: perception_score(r, {"class_aware": "false"})),
        len(det),
    )
    add(
        "detection: AP-aligned true positives vs one 0.5 threshold",
        changed(det, perception_score, lambda r: perception_score(r, {"ap_aligned": "false"})),
        len(det),
    )
    add(
        "perception: defaults vs preset=paper",
        changed(per, perception_score, lambda r: perception_score(r, {"preset": "paper"})),
        n_per,
    )

    table = ["| difference | rows changed | of |", "|---|---:|---:|"]
    table += [f"| {name} | {k} | {total} |" for name, k, total in lines]
    # geo3k by rewrite: original vs our defaults, and the accuracy each gives
    variants = list(dict.fromkeys(r["variant"] for r in geo))
    acc_orig = [accuracy(r["response"], r["truth"], "original", "original") for r in geo]
    acc_ours = [accuracy(r["response"], r["truth"], "ours", "ours") for r in geo]
    before, after = geo_scores(**original), geo_scores(**ours)
    by = ["| rewrite | rows | score changed | accuracy original → ours (mean) |", "|---|---:|---:|---|"]
    for v in variants:
        idx = [i for i, r in enumerate(geo) if r["variant"] == v]
        moved = sum(1 for i in idx if abs(before[i] - after[i]) > 1e-9)
        a, b = (sum(x[i] for i in idx) / len(idx) for x in (acc_orig, acc_ours))
        by.append(f"| {v} | {len(idx)} | {moved} | {a:.2f} → {b:.2f} |")
    return {
        "table": "\n".join(table) + "\n\n" + "\n".join(by),
        "counts": {name: [k, total] for name, k, total in lines},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the counts as JSON here")
    args = parser.parse_args(argv)
    result = run()
    print(result["table"])
    if args.json:
        args.json.write_text(json.dumps(result["counts"], indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
