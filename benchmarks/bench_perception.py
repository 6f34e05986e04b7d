"""Throughput of the perception rewards; prints a Markdown table.

Detection: 100 predicted × 100 ground-truth boxes per sample, (a) the matching core (vectorised IoU matrix +
Hungarian) against a plain Python-loop IoU with greedy matching, and (b) the whole scorer per sample (parse the
JSON answer, convert the frame, match, components). Counting: 50 × 50 points per sample through the scorer. OCR:
the real pages of ``shared/data/ocr`` with every tenth word dropped, through the scorer.

    python benchmarks/bench_perception.py            # defaults
    python benchmarks/bench_perception.py --repeats 200 --shared-data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from perception_r1.rewards import counting, detection, ocr
from perception_r1.rewards.boxes import format_boxes_json, from_original, pairwise_iou
from perception_r1.rewards.matching import hungarian_match
from perception_r1.rewards.registry import build_settings

REPO = Path(__file__).resolve().parents[1]


def python_loop_greedy(pred: list[list[float]], gt: list[list[float]]) -> float:
    """The baseline: IoU pair by pair in Python, then greedy matching by descending IoU."""
    pairs = []
    for i, a in enumerate(pred):
        for j, b in enumerate(gt):
            iw = min(a[2], b[2]) - max(a[0], b[0])
            ih = min(a[3], b[3]) - max(a[1], b[1])
            if iw <= 0 or ih <= 0:
                continue
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            pairs.append((inter / union, i, j))
    pairs.sort(reverse=True)
    used_p, used_g, total = set(), set(), 0.0
    for iou, i, j in pairs:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            total += iou
    return total


def vectorised_hungarian(pred: np.ndarray, gt: np.ndarray) -> float:
    return hungarian_match(pairwise_iou(pred, gt)).total


def per_call_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of one call in milliseconds (after a warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def random_boxes(rng: np.random.Generator, k: int, w: float = 640, h: float = 480) -> np.ndarray:
    xy = rng.uniform(0, [w - 60, h - 60], size=(k, 2))
    return np.concatenate([xy, xy + rng.uniform(10, 60, size=(k, 2))], axis=1)


def run(repeats: int = 100, shared_data: str | Path = REPO.parent / "shared" / "data") -> dict:
    """Time every workload; returns ``{"rows": [...], "table": markdown}`` (``run_all.py`` prints the table).

    ``run_all.py`` passes its own small ``repeats`` (process repeats there); here it is timed calls, so at least 50.
    """
    repeats = max(int(repeats), 50)
    rng = np.random.default_rng(0)
    rows = []

    # ---- detection, 100 x 100
    gt = random_boxes(rng, 100)
    pred = gt + rng.normal(0, 4, size=gt.shape)
    pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 1)
    pred = pred[rng.permutation(100)]
    gt_list, pred_list = gt.tolist(), pred.tolist()
    baseline = per_call_ms(lambda: python_loop_greedy(pred_list, gt_list), max(repeats // 5, 10))
    core = per_call_ms(lambda: vectorised_hungarian(pred, gt), repeats)
    labels = [["cat", "dog", "person", "car"][i % 4] for i in range(100)]
    objects = [{"bbox": b, "label": lab} for b, lab in zip(gt_list, labels, strict=True)]
    extra = {"image_size": [640, 480]}
    det_settings = build_settings(detection.DetectionSettings, {"coord_frame": "qwen2_5_vl"})
    answer = format_boxes_json(from_original(pred, "qwen2_5_vl", (640, 480)), labels)
    full = per_call_ms(lambda: detection.rule_components(answer, objects, extra, det_settings), repeats)
    rows.append(("detection 100×100: Python-loop IoU + greedy (baseline)", baseline, 1000 / baseline, "1.0×"))
    rows.append(("detection 100×100: numpy IoU + Hungarian (core)", core, 1000 / core, f"{baseline / core:.1f}×"))
    rows.append(("detection 100×100: whole scorer (parse+frame+match)", full, 1000 / full, f"{baseline / full:.1f}×"))

    # ---- counting, 50 x 50 points
    points = rng.uniform(0, [640, 480], size=(50, 2))
    guess = points + rng.normal(0, 8, size=points.shape)
    count_settings = build_settings(counting.CountingSettings, {"coord_frame": "qwen2_vl"})
    count_answer = json.dumps(
        [{"point_2d": [int(v) for v in p], "label": "x"} for p in from_original(guess, "qwen2_vl", (640, 480))]
    )
    count_gt = points.tolist()
    cnt = per_call_ms(lambda: counting.rule_components(count_answer, count_gt, extra, count_settings), repeats)
    rows.append(("counting 50×50 points: whole scorer", cnt, 1000 / cnt, ""))

    # ---- OCR, real pages
    ocr_dir = Path(shared_data) / "ocr"
    ocr_settings = build_settings(ocr.OcrSettings, {})
    if (ocr_dir / "pages.jsonl").is_file():
        pages = [json.loads(line) for line in (ocr_dir / "pages.jsonl").read_text().splitlines() if line.strip()]
        texts = [(ocr_dir / p["text"]).read_text(encoding="utf-8") for p in pages]
        answers = [" ".join(w for i, w in enumerate(t.split()) if i % 10 != 3) for t in texts]
        chars = sum(len(t) for t in texts)

        def all_pages() -> None:
            for a, t in zip(answers, texts, strict=True):
                ocr.rule_components(a, t, {}, ocr_settings)

        page_ms = per_call_ms(all_pages, max(repeats // 5, 10)) / len(texts)
        rows.append((f"OCR: real page (mean {chars // len(texts)} chars), whole scorer", page_ms, 1000 / page_ms, ""))

    lines = ["| workload | ms / sample | samples / s | vs baseline |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {ms:.3f} | {rate:,.0f} | {speedup} |" for name, ms, rate, speedup in rows]
    return {"rows": rows, "table": "\n".join(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per measurement (median reported)")
    parser.add_argument("--shared-data", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    print(run(args.repeats, args.shared_data)["table"])


if __name__ == "__main__":
    main()
