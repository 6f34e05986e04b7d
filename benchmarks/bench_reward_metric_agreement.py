"""Reward–metric agreement: does each perception reward rank outputs the way its benchmark metric does?

For every task, real rows from ``../shared/data`` (COCO objects and images, OCR pages) get a correct answer in
the paper's model syntax and perturbation families of it: box jitter, label swaps, duplicates, misses, extra boxes,
point noise, OCR typos, dropped words and truncation. Each output is scored by the training reward (the registered
task, exactly as in training) and by the benchmark metric of :mod:`perception_r1.eval.perception_metrics`:

| task | benchmark metric of one output | of a prediction set |
|---|---|---|
| ``refcoco`` | hit at IoU ≥ 0.5 | Acc@0.5 |
| ``pixmo_count`` | count right | count accuracy |
| ``pageocr`` | 1 − edit distance | 1 − mean edit distance |
| ``coco_detection`` | COCO AP (pycocotools) of this image's answer among ``CONTEXT`` perfectly answered copies of the set | COCO AP over ``CONTEXT`` copies of the set |

Two levels, because GRPO compares outputs *of one prompt* while a benchmark scores a whole prediction set:

- **outputs** (the property a reward must keep): for each row, every pair of its candidate outputs; an *inversion*
  is a pair the reward orders one way and the metric the other, each by a clear margin (metric by more than
  ``METRIC_MARGIN``, reward by more than ``REWARD_MARGIN`` of its range). Goal: none.
- **sets**: each perturbation at each strength applied to every row (discrete mistakes to a share of the rows);
  Spearman's ρ between the mean reward and the benchmark number over those prediction sets (goal ρ ≥ 0.9), and the
  set pairs ordered differently. A set-level disagreement between *different* families is a trade-off of the reward
  design (the counting reward values point locations, which count accuracy ignores), not a preference between two
  answers to one prompt; they are listed so they can be judged.

    python benchmarks/bench_reward_metric_agreement.py                 # the table (about a minute)
    python benchmarks/bench_reward_metric_agreement.py --set class_aware=false   # an ablation's agreement
    python benchmarks/bench_reward_metric_agreement.py --json out.json --show 5

Settings are passed explicitly (the frames of the answers included), so the script also scores older code.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TASKS = ("refcoco", "pixmo_count", "pageocr", "coco_detection")
METRIC_MARGIN = 0.01
"""A metric difference counts as clear above this (metrics are in [0, 1]; binary ones differ by 1)."""
REWARD_MARGIN = 0.02
"""A reward difference counts as clear above this share of the reward's range."""
REWARD_RANGE = {"refcoco": 2.0, "pixmo_count": 3.0, "pageocr": 2.0, "coco_detection": 5.0}
CONTEXT = 10
"""Detection, one output: the image's answer is ranked mid-way among this many perfectly answered copies of every
image (constant scores: pycocotools breaks ties by image order). On a 9-image set alone, one wrong box ranked
first would halve a class's AP; on COCO val (36k objects) it costs about what a missed object costs, which a
larger context approximates."""
DET_PIXELS = {"min_pixels": 3136, "max_pixels": 1003520}
FRAMES: dict[str, dict[str, Any]] = {  # the paper's models: Qwen2-VL-2B (thousandths), Qwen2.5-VL-3B for detection
    "refcoco": {"coord_frame": "qwen2_vl"},
    "pixmo_count": {"coord_frame": "qwen2_vl"},
    "pageocr": {},
    "coco_detection": {"coord_frame": "qwen2_5_vl", **DET_PIXELS},
}


@dataclass
class Row:
    """One benchmark item: ground truth in original pixels, the scorer's ``extra_info`` and what perturbing needs."""

    ground_truth: Any
    extra_info: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scored:
    """One candidate output of one row, scored both ways."""

    row: int
    family: str
    strength: float
    response: str
    reward: float
    metric: float


# ------------------------------------------------------------------ real rows


def _coco(shared: Path) -> dict[str, Any]:
    return json.loads((shared / "coco" / "instances.json").read_text(encoding="utf-8"))


def _xyxy(bbox: Sequence[float]) -> list[float]:
    return [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]


def coco_images(shared: Path) -> list[dict[str, Any]]:
    """The COCO sample's images with their objects ``{"bbox": xyxy, "label"}`` (crowd-free, as the builder)."""
    data = _coco(shared)
    names = {c["id"]: c["name"] for c in data["categories"]}
    out = []
    for img in sorted(data["images"], key=lambda i: i["id"]):
        objects = [
            {"bbox": _xyxy(a["bbox"]), "label": names[a["category_id"]]}
            for a in data["annotations"]
            if a["image_id"] == img["id"] and not a.get("iscrowd")
        ]
        out.append({"id": img["id"], "size": [img["width"], img["height"]], "objects": objects})
    return out


def load_rows(task: str, shared: Path, limit: int | None = None) -> list[Row]:
    """Real rows for ``task`` (``limit``: the first ones only, for a quick check)."""
    rows: list[Row] = []
    if task == "refcoco":
        for img in coco_images(shared):
            for obj in img["objects"]:
                extra = {"image_size": img["size"]}
                rows.append(Row(obj["bbox"], extra, {"label": obj["label"], "size": img["size"]}))
    elif task == "pixmo_count":
        for img in coco_images(shared):
            for label in sorted({o["label"] for o in img["objects"]}):
                boxes = [o["bbox"] for o in img["objects"] if o["label"] == label]
                centres = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in boxes]
                rows.append(
                    Row(centres, {"image_size": img["size"]}, {"boxes": boxes, "label": label, "size": img["size"]})
                )
    elif task == "pageocr":
        for line in (shared / "ocr" / "pages.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                page = json.loads(line)
                text = (shared / "ocr" / page["text"]).read_text(encoding="utf-8")
                rows.append(Row(text, {"image_size": [page["width"], page["height"]]}, {}))
    elif task == "coco_detection":
        labels = sorted({o["label"] for img in coco_images(shared) for o in img["objects"]})
        for img in coco_images(shared):
            meta = {"image_id": img["id"], "size": img["size"], "labels": labels}
            rows.append(Row(img["objects"], {"image_size": img["size"]}, meta))
    else:
        raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
    return rows[:limit] if limit else rows


# ------------------------------------------------------------------ answers in the models' syntax


def _qwen2_boxes(boxes: Sequence[Sequence[float]], size: Sequence[float], label: str) -> str:
    """Qwen2-VL's special-token boxes, thousandths of the image (what the paper's 2B model writes)."""
    from perception_r1.rewards.boxes import from_original

    coords = from_original(np.asarray(boxes, dtype=float).reshape(-1, 4), "qwen2_vl", size)
    coords = np.clip(np.round(coords), 0, 999).astype(int)
    return "".join(
        f"<|object_ref_start|>{label}<|object_ref_end|><|box_start|>({b[0]},{b[1]}),({b[2]},{b[3]})<|box_end|>"
        for b in coords.tolist()
    )


def _qwen25_json(boxes: Sequence[Sequence[float]], labels: Sequence[str], size: Sequence[float]) -> str:
    """Qwen2.5-VL's fenced JSON, integer pixels of the resized image."""
    from perception_r1.rewards.boxes import from_original

    coords = from_original(np.asarray(boxes, dtype=float).reshape(-1, 4), "qwen2_5_vl", size, **DET_PIXELS)
    items = [
        {"bbox_2d": [int(round(v)) for v in b], "label": lab} for b, lab in zip(coords.tolist(), labels, strict=True)
    ]
    return "```json\n" + json.dumps(items) + "\n```"


def _clip_box(box: Sequence[float], size: Sequence[float]) -> list[float]:
    w, h = size
    x1, y1, x2, y2 = box
    x1, x2 = max(0.0, min(x1, w - 2)), max(1.0, min(x2, w))
    y1, y2 = max(0.0, min(y1, h - 2)), max(1.0, min(y2, h))
    return [x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)]


def _jitter(box: Sequence[float], f: float, size: Sequence[float], rng: random.Random) -> list[float]:
    """Move the box by ``f`` of its size in a random direction and rescale it by up to ``±f/2``."""
    w, h = box[2] - box[0], box[3] - box[1]
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = (box[0] + box[2]) / 2 + f * w * math.cos(angle), (box[1] + box[3]) / 2 + f * h * math.sin(angle)
    s = 1 + rng.uniform(-f / 2, f / 2)
    return _clip_box([cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2], size)


def _random_box(
    like: Sequence[float], size: Sequence[float], rng: random.Random, avoid: Sequence[Sequence[float]]
) -> list[float]:
    """A box of ``like``'s size somewhere in the image, overlapping none of ``avoid`` when that is possible."""
    from perception_r1.rewards.boxes import pairwise_iou

    w, h = like[2] - like[0], like[3] - like[1]
    best = None
    for _ in range(50):
        x, y = rng.uniform(0, max(1.0, size[0] - w)), rng.uniform(0, max(1.0, size[1] - h))
        box = _clip_box([x, y, x + w, y + h], size)
        overlap = float(pairwise_iou([box], avoid).max()) if len(avoid) else 0.0
        if best is None or overlap < best[0]:
            best = (overlap, box)
        if overlap == 0.0:
            break
    return best[1]  # type: ignore[index]


# ------------------------------------------------------------------ perturbation families


def _grounding(row: Row, family: str, strength: float, rng: random.Random) -> str:
    box, size, label = row.ground_truth, row.meta["size"], f"the {row.meta['label']}"
    if family == "correct":
        boxes = [box]
    elif family == "jitter":
        boxes = [_jitter(box, strength, size, rng)]
    elif family == "duplicate":
        boxes = [box] * (1 + int(strength))
    elif family == "extra":  # the right box, then others
        boxes = [box] + [_random_box(box, size, rng, [box]) for _ in range(int(strength))]
    elif family == "extra_first":  # another box first: the one the benchmark reads
        boxes = [_random_box(box, size, rng, [box]) for _ in range(int(strength))] + [box]
    elif family == "miss":
        return "I cannot find it in the image."
    else:
        raise ValueError(family)
    return _qwen2_boxes(boxes, size, label)


def _counting(row: Row, family: str, strength: float, rng: random.Random) -> str:
    boxes, size, label = [list(b) for b in row.meta["boxes"]], row.meta["size"], row.meta["label"]
    k = int(strength)
    if family == "noise":  # every box's centre moved by a normal offset of `strength` image diagonals
        sigma = strength * math.hypot(*size)
        moved = []
        for b in boxes:
            dx, dy = rng.gauss(0, sigma), rng.gauss(0, sigma)
            moved.append(_clip_box([b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy], size))
        boxes = moved
    elif family == "duplicate":
        boxes = boxes + [boxes[rng.randrange(len(boxes))] for _ in range(k)]
    elif family == "miss":
        for _ in range(min(k, len(boxes))):
            boxes.pop(rng.randrange(len(boxes)))
        if not boxes:
            return "There is none."
    elif family == "extra":
        boxes = boxes + [_random_box(boxes[0], size, rng, boxes) for _ in range(k)]
    elif family != "correct":
        raise ValueError(family)
    return _qwen2_boxes(boxes, size, label)


def _ocr(row: Row, family: str, strength: float, rng: random.Random) -> str:
    text = row.ground_truth
    if family == "correct":
        return text
    if family == "typos":  # each character substituted, deleted or doubled with probability `strength`
        out = []
        for ch in text:
            if not ch.isspace() and rng.random() < strength:
                kind = rng.randrange(3)
                if kind == 0:
                    out.append(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789"))
                elif kind == 2:
                    out.append(ch + ch)
            else:
                out.append(ch)
        return "".join(out)
    if family == "drop_words":
        return "\n".join(" ".join(w for w in line.split() if rng.random() >= strength) for line in text.splitlines())
    if family == "truncate":  # a reply cut off: only the first `1 - strength` of the page
        return text[: int(len(text) * (1 - strength))]
    if family == "miss":
        return ""
    raise ValueError(family)


def _detection(row: Row, family: str, strength: float, rng: random.Random) -> str:
    objects, size, pool = row.ground_truth, row.meta["size"], row.meta["labels"]
    boxes = [list(o["bbox"]) for o in objects]
    labels = [o["label"] for o in objects]
    n = len(boxes)
    pick = max(1, round(strength * n)) if family in ("label_swap", "duplicate", "miss") else 0
    chosen = rng.sample(range(n), min(pick, n))
    if family == "jitter":
        boxes = [_jitter(b, strength, size, rng) for b in boxes]
    elif family == "label_swap":  # a category present in the dataset, never the right one
        for i in chosen:
            labels[i] = rng.choice([lab for lab in pool if lab != labels[i]])
    elif family == "duplicate":
        boxes += [boxes[i] for i in chosen]
        labels += [labels[i] for i in chosen]
    elif family == "miss":
        keep = [i for i in range(n) if i not in set(chosen)]
        boxes, labels = [boxes[i] for i in keep], [labels[i] for i in keep]
        if not boxes:
            return "```json\n[]\n```"
    elif family == "extra":
        for _ in range(int(strength)):
            boxes.append(_random_box(boxes[rng.randrange(n)], size, rng, boxes))
            labels.append(rng.choice(pool))
    elif family != "correct":
        raise ValueError(family)
    return _qwen25_json(boxes, labels, size)


PERTURB: dict[str, Callable[[Row, str, float, random.Random], str]] = {
    "refcoco": _grounding,
    "pixmo_count": _counting,
    "pageocr": _ocr,
    "coco_detection": _detection,
}
FAMILIES: dict[str, list[tuple[str, float]]] = {
    "refcoco": [("correct", 0)]
    + [("jitter", f) for f in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)]
    + [("duplicate", 1), ("duplicate", 2), ("extra", 1), ("extra", 2), ("extra_first", 1), ("miss", 0)],
    "pixmo_count": [("correct", 0)]
    + [("noise", s) for s in (0.005, 0.01, 0.02, 0.04, 0.08)]
    + [(f, k) for f in ("duplicate", "miss", "extra") for k in (1, 2)],
    "pageocr": [("correct", 0)]
    + [("typos", r) for r in (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)]
    + [("drop_words", r) for r in (0.05, 0.1, 0.3)]
    + [("truncate", r) for r in (0.1, 0.25, 0.5)]
    + [("miss", 0)],
    "coco_detection": [("correct", 0)]
    + [("jitter", f) for f in (0.05, 0.1, 0.2, 0.35, 0.5, 0.8)]
    + [(f, p) for f in ("label_swap", "duplicate", "miss") for p in (0.25, 0.5, 1.0)]
    + [("extra", 1), ("extra", 3)],
}
DISCRETE = {"duplicate", "miss", "extra", "extra_first"}
"""Mistakes a set-level prediction makes on a share of the rows (a count or a hit is all or nothing per row)."""
SHARES = (0.25, 0.5, 1.0)


def _rng(seed: int, *parts: Any) -> random.Random:
    return random.Random(f"{seed}|" + "|".join(map(str, parts)))


# ------------------------------------------------------------------ the two scorers


class Scorers:
    """The reward (registered task, pure functions) and the benchmark metric for one task."""

    def __init__(self, task: str, rows: list[Row], shared: Path, overrides: dict[str, Any] | None = None) -> None:
        from perception_r1.rewards.boxes import PerceptionSettings
        from perception_r1.rewards.registry import build_settings, get_task

        self.task_name = task
        self.task = get_task(task)
        self.rows = rows
        chosen = {**FRAMES[task], **(overrides or {})}
        self.settings = build_settings(self.task.settings, chosen)
        self.perception = build_settings(PerceptionSettings, chosen)
        if task == "coco_detection":
            data = _coco(shared)
            self.gt_data = data
            self.category_ids = {c["name"]: c["id"] for c in data["categories"]}
            self.image_ids = [r.meta["image_id"] for r in rows]
            perfect = [_detection(r, "correct", 0, random.Random(0)) for r in rows]
            self._perfect = [self._coco_results(i, text) for i, text in enumerate(perfect)]
            self._context = self._build_context(data)

    def reward(self, row: Row, response: str) -> float:
        self.task.validate(row.ground_truth, row.extra_info)
        components = self.task.rule_components(response, row.ground_truth, row.extra_info, self.settings)
        return float(self.task.combine(components, self.settings))

    # -- the benchmark metrics (perception_r1.eval.perception_metrics, as `eval score` computes them)

    def _coco_results(self, index: int, response: str) -> list[dict[str, Any]]:
        from perception_r1.eval.perception_metrics import detections_from_response

        row = self.rows[index]
        found, _ = detections_from_response(
            response, row.meta["image_id"], row.meta["size"], self.category_ids, self.perception
        )
        return found

    def output_metric(self, index: int, response: str) -> float:
        """The benchmark's verdict on one output (see the module table)."""
        from perception_r1.eval import perception_metrics as pm
        from perception_r1.rewards.boxes import split_answer

        row = self.rows[index]
        if self.task_name == "refcoco":
            iou = pm.grounding_iou_from_response(response, row.ground_truth, row.meta["size"], self.perception)
            return float(iou >= 0.5)
        if self.task_name == "pixmo_count":
            return float(pm.count_from_response(response, self.perception) == len(row.ground_truth))
        if self.task_name == "pageocr":
            answer = split_answer(response, self.perception.thinking)[0]
            return 1.0 - pm.ocr_page_metrics(answer, row.ground_truth)["edit_distance"]
        gt, context, mid = self._context[index]
        results = context + [{**d, "image_id": mid} for d in self._coco_results(index, response)]
        return self._ap(results, gt)

    def _build_context(self, data: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]], int]]:
        """Per row: ``(ground truth, results, image id)`` of ``CONTEXT`` perfectly answered copies of every row's
        image (even ids, in order) with the row's own image inserted at an odd id half-way, where its boxes rank."""
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)

        def image(image_id: int, row: Row) -> dict[str, Any]:
            return {"id": image_id, "width": row.meta["size"][0], "height": row.meta["size"][1]}

        images, annotations, results = [], [], []
        order = [i for _ in range(CONTEXT) for i in range(len(self.rows))]
        for k, i in enumerate(order):
            images.append(image(2 * k, self.rows[i]))
            for ann in by_image.get(self.rows[i].meta["image_id"], []):
                annotations.append({**ann, "id": len(annotations) + 1, "image_id": 2 * k})
            results += [{**d, "image_id": 2 * k} for d in self._perfect[i]]
        mid = 2 * (len(order) // 2) + 1
        out = []
        for row in self.rows:
            own = [
                {**a, "id": len(annotations) + j + 1, "image_id": mid}
                for j, a in enumerate(by_image.get(row.meta["image_id"], []))
            ]
            gt = {
                "images": [*images, image(mid, row)],
                "annotations": annotations + own,
                "categories": data["categories"],
            }
            out.append((gt, results, mid))
        return out

    def _ap(self, results: list[dict[str, Any]], gt: dict[str, Any] | None = None) -> float:
        from perception_r1.eval.perception_metrics import coco_detection_metrics

        if gt is not None:
            return coco_detection_metrics(gt, results)["AP"]
        return coco_detection_metrics(self.gt_data, results, image_ids=self.image_ids)["AP"]

    def set_metric(self, responses: list[str]) -> float:
        """The benchmark number of a whole prediction set (one response per row)."""
        from perception_r1.eval import perception_metrics as pm
        from perception_r1.rewards.boxes import split_answer

        if self.task_name == "refcoco":
            ious = [
                pm.grounding_iou_from_response(t, r.ground_truth, r.meta["size"], self.perception)
                for t, r in zip(responses, self.rows, strict=True)
            ]
            return pm.grounding_accuracy(ious)["acc@0.5"]
        if self.task_name == "pixmo_count":
            counts = [pm.count_from_response(t, self.perception) for t in responses]
            return pm.counting_accuracy(counts, [len(r.ground_truth) for r in self.rows])["accuracy"]
        if self.task_name == "pageocr":
            edits = [
                pm.ocr_page_metrics(split_answer(t, self.perception.thinking)[0], r.ground_truth)["edit_distance"]
                for t, r in zip(responses, self.rows, strict=True)
            ]
            return 1.0 - float(np.mean(edits))
        return self._set_ap([self._coco_results(i, t) for i, t in enumerate(responses)])

    def _set_ap(self, answers: list[list[dict[str, Any]]]) -> float:
        """COCO AP of a prediction set, over ``CONTEXT`` copies of it (the same answers on every copy, so a
        class's detections interleave across images as on a full-size benchmark, not one image after another)."""
        gt, _, _ = self._context[0]
        n = len(self.rows)
        results = [{**d, "image_id": 2 * k} for k in range(CONTEXT * n) for d in answers[k % n]]
        gt = {
            **gt,
            "images": gt["images"][: CONTEXT * n],
            "annotations": [a for a in gt["annotations"] if a["image_id"] % 2 == 0],
        }
        return self._ap(results, gt)


# ------------------------------------------------------------------ agreement


@dataclass
class Agreement:
    """Everything measured for one task."""

    task: str
    rows: int
    outputs: int
    output_pairs: int
    output_inversions: list[tuple[Scored, Scored]]
    output_disagreements: list[tuple[Scored, Scored]]
    """Pairs ordered differently by any margin (the clear ones are ``output_inversions``)."""
    output_rho: float
    set_points: list[dict[str, Any]]
    set_rho: float
    set_inversions: list[tuple[dict[str, Any], dict[str, Any]]]
    scored: list[Scored] = field(default_factory=list, repr=False)


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _clear(a_metric: float, b_metric: float, a_reward: float, b_reward: float, reward_range: float) -> bool:
    """``a`` is better by the metric and worse by the reward, both by a clear margin."""
    return a_metric > b_metric + METRIC_MARGIN and a_reward < b_reward - REWARD_MARGIN * reward_range


def measure(
    task: str,
    shared: Path = SHARED_DATA,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    limit: int | None = None,
    set_level: bool = True,
) -> Agreement:
    """Score every candidate of every row both ways; inversions and Spearman's ρ (see the module docstring)."""
    rows = load_rows(task, shared, limit)
    scorers = Scorers(task, rows, shared, overrides)
    perturb = PERTURB[task]
    span = REWARD_RANGE[task]
    scored: list[Scored] = []
    for i, row in enumerate(rows):
        for family, strength in FAMILIES[task]:
            response = perturb(row, family, strength, _rng(seed, task, i, family, strength))
            scored.append(
                Scored(i, family, strength, response, scorers.reward(row, response), scorers.output_metric(i, response))
            )
    inversions, disagreements, pairs = [], [], 0
    for i in range(len(rows)):
        mine = [s for s in scored if s.row == i]
        for a in mine:
            for b in mine:
                if a is b:
                    continue
                pairs += 1
                if _clear(a.metric, b.metric, a.reward, b.reward, span):
                    inversions.append((a, b))
                if a.metric > b.metric + 1e-9 and a.reward < b.reward - 1e-9:
                    disagreements.append((a, b))
    pairs //= 2
    output_rho = _spearman([s.reward for s in scored], [s.metric for s in scored])

    points: list[dict[str, Any]] = []
    if set_level:
        for family, strength in FAMILIES[task]:
            shares = SHARES if family in DISCRETE else (1.0,)
            for share in shares:
                pick = _rng(seed, task, "share", share)  # the same rows for every family: comparable sets
                hit = set(pick.sample(range(len(rows)), max(1, round(share * len(rows)))))
                responses, rewards = [], []
                for i, row in enumerate(rows):
                    fam = family if i in hit else "correct"
                    response = perturb(row, fam, strength, _rng(seed, task, i, fam, strength))
                    responses.append(response)
                    rewards.append(scorers.reward(row, response))
                name = (
                    family
                    if family == "correct"
                    else f"{family} {strength:g}" + (f" on {share:.0%} of rows" if family in DISCRETE else "")
                )
                points.append({"set": name, "reward": float(np.mean(rewards)), "metric": scorers.set_metric(responses)})
    set_inv = [
        (a, b) for a in points for b in points if _clear(a["metric"], b["metric"], a["reward"], b["reward"], span)
    ]
    set_rho = _spearman([p["reward"] for p in points], [p["metric"] for p in points]) if points else float("nan")
    return Agreement(
        task, len(rows), len(scored), pairs, inversions, disagreements, output_rho, points, set_rho, set_inv, scored
    )


# ------------------------------------------------------------------ report


def table(results: list[Agreement]) -> str:
    lines = [
        "| task | rows | outputs | output pairs | clear inversions | any-margin disagreements | ρ outputs "
        "| prediction sets | ρ sets | set inversions (same family) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        same = sum(1 for a, b in r.set_inversions if a["set"].split()[0] == b["set"].split()[0])
        lines.append(
            f"| {r.task} | {r.rows} | {r.outputs} | {r.output_pairs:,} | {len(r.output_inversions)} | "
            f"{len(r.output_disagreements)} | {r.output_rho:.3f} | {len(r.set_points)} | {r.set_rho:.3f} | "
            f"{len(r.set_inversions)} ({same}) |"
        )
    return "\n".join(lines)


def describe(results: list[Agreement], show: int) -> str:
    out = []
    for r in results:
        for a, b in (r.output_inversions or r.output_disagreements)[:show]:
            out.append(
                f"- {r.task} row {a.row}: metric prefers {a.family} {a.strength:g} ({a.metric:.3f}, reward "
                f"{a.reward:.3f}) over {b.family} {b.strength:g} ({b.metric:.3f}, reward {b.reward:.3f})"
            )
        for a, b in r.set_inversions[:show]:
            out.append(
                f"- {r.task} sets: metric prefers '{a['set']}' ({a['metric']:.3f}, reward {a['reward']:.3f}) over "
                f"'{b['set']}' ({b['metric']:.3f}, reward {b['reward']:.3f})"
            )
    return "\n".join(out)


def run(
    repeats: int = 1, overrides: dict[str, Any] | None = None, tasks: Sequence[str] = TASKS, show: int = 3
) -> dict[str, Any]:
    """For ``benchmarks/run_all.py``: the agreement table (``repeats`` is unused: nothing here is timed)."""
    results = [measure(task, overrides=overrides) for task in tasks]
    return {
        "table": table(results),
        "details": describe(results, show=show),
        "tasks": {
            r.task: {
                "rows": r.rows,
                "outputs": r.outputs,
                "output_pairs": r.output_pairs,
                "output_inversions": len(r.output_inversions),
                "output_disagreements": len(r.output_disagreements),
                "output_rho": r.output_rho,
                "set_rho": r.set_rho,
                "set_inversions": len(r.set_inversions),
                "sets": r.set_points,
            }
            for r in results
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--set", dest="settings", nargs="+", default=[], metavar="KEY=VALUE", help="reward settings")
    parser.add_argument("--show", type=int, default=5, help="disagreeing pairs to list per task (default 5)")
    parser.add_argument("--json", type=Path, help="also write the numbers (every prediction set) as JSON here")
    args = parser.parse_args(argv)
    from perception_r1.rewards.registry import parse_set_options

    result = run(overrides=parse_set_options(args.settings), tasks=args.tasks, show=args.show)
    print(result["table"])
    if result["details"]:
        print("\nDisagreeing pairs (first few per task):\n" + result["details"])
    if args.json:
        args.json.write_text(json.dumps(result["tasks"], indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
