"""Property tests (hypothesis) of the perception rewards: the invariants a GRPO reward must keep.

Permutation invariance; a perfect prediction scores the documented maximum; bounds; a box (or point) moving
closer to its target never lowers the score; duplicating a prediction never raises it (for objects that do not
share a prediction's credit, and unless the repeat makes a count right that the counting benchmark also counts
right: see docs/perception_rewards.md); empty or garbage output scores the minimum;
Hungarian matching equals brute force.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from perception_r1.eval.perception_metrics import count_from_response
from perception_r1.rewards.matching import hungarian_match
from perception_r1.rewards.registry import build_settings, get_task

W, H = 640, 480
SIZE = {"image_size": [W, H]}
CELL = 160  # a 4 x 3 grid of cells; objects in different cells never overlap
LABELS = ["cat", "dog", "person", "traffic light"]
MAX = {"refcoco": 2.0, "pixmo_count": 3.0, "pageocr": 2.0, "coco_detection": 4.0}
MIN = {"refcoco": 0.0, "pixmo_count": 0.0, "pageocr": 0.0, "coco_detection": -1.0}
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(data_source: str, response: str, ground_truth, extra_info=SIZE, **overrides) -> dict:
    task = get_task(data_source)
    s = build_settings(task.settings, {"coord_frame": "absolute", **overrides})
    task.validate(ground_truth, extra_info)
    c = task.rule_components(response, ground_truth, extra_info, s)
    return {"score": task.combine(c, s), **c}


def det_answer(boxes, labels) -> str:
    return json.dumps([{"bbox_2d": [float(v) for v in b], "label": lab} for b, lab in zip(boxes, labels, strict=True)])


def point_answer(points) -> str:
    return json.dumps([{"point_2d": [float(v) for v in p]} for p in points])


@st.composite
def any_box(draw, w=W, h=H):
    x1 = draw(st.floats(0, w - 2))
    y1 = draw(st.floats(0, h - 2))
    x2 = draw(st.floats(x1 + 1, w))
    y2 = draw(st.floats(y1 + 1, h))
    return [x1, y1, x2, y2]


@st.composite
def cell_box(draw, cell):
    """A box strictly inside grid cell ``cell`` (index 0..11)."""
    cx, cy = (cell % 4) * CELL, (cell // 4) * CELL
    x1 = draw(st.floats(cx + 1, cx + CELL - 12))
    y1 = draw(st.floats(cy + 1, cy + CELL - 12))
    x2 = draw(st.floats(x1 + 5, cx + CELL - 1))
    y2 = draw(st.floats(y1 + 5, cy + CELL - 1))
    return [x1, y1, x2, y2]


@st.composite
def cell_scene(draw, min_gt=1):
    """Ground-truth objects and predictions, each in a distinct-per-object grid cell (predictions may repeat cells)."""
    cells = draw(st.lists(st.integers(0, 11), min_size=min_gt, max_size=6, unique=True))
    gt = [{"bbox": draw(cell_box(c)), "label": draw(st.sampled_from(LABELS))} for c in cells]
    pred_cells = draw(st.lists(st.integers(0, 11), max_size=8))
    preds = [draw(cell_box(c)) for c in pred_cells]
    labels = [draw(st.sampled_from(LABELS)) for _ in preds]
    return gt, preds, labels


@st.composite
def any_scene(draw):
    gt = [{"bbox": draw(any_box()), "label": draw(st.sampled_from(LABELS))} for _ in range(draw(st.integers(1, 5)))]
    preds = [draw(any_box()) for _ in range(draw(st.integers(0, 6)))]
    labels = [draw(st.sampled_from(LABELS)) for _ in preds]
    return gt, preds, labels


def centre_point(cell, dx, dy):
    """A point within 20 px of a cell's centre: points in different cells are > 80 px apart (the kernel's reach)."""
    return [(cell % 4) * CELL + CELL / 2 + dx, (cell // 4) * CELL + CELL / 2 + dy]


offsets = st.tuples(st.floats(-20, 20), st.floats(-20, 20))
garbage_text = st.text(alphabet=st.characters(blacklist_categories=("Nd", "Cs")), max_size=200)


# ------------------------------------------------------------------ permutation invariance


@FAST
@given(any_scene(), st.randoms(use_true_random=False))
def test_detection_permutation_invariant(scene, rnd):
    gt, preds, labels = scene
    order = list(range(len(preds)))
    rnd.shuffle(order)
    a = run("coco_detection", det_answer(preds, labels), gt)
    b = run("coco_detection", det_answer([preds[i] for i in order], [labels[i] for i in order]), gt)
    rnd.shuffle(gt)
    c = run("coco_detection", det_answer([preds[i] for i in order], [labels[i] for i in order]), gt)
    for key in a:
        assert np.isclose(a[key], b[key], atol=1e-9) and np.isclose(a[key], c[key], atol=1e-9), key


@FAST
@given(
    st.lists(st.tuples(st.floats(0, W), st.floats(0, H)), max_size=8),
    st.lists(st.tuples(st.floats(0, W), st.floats(0, H)), min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_counting_permutation_invariant(preds, gt, rnd):
    a = run("pixmo_count", point_answer(preds), [list(p) for p in gt])
    rnd.shuffle(preds)
    rnd.shuffle(gt)
    b = run("pixmo_count", point_answer(preds), [list(p) for p in gt])
    for key in a:
        assert np.isclose(a[key], b[key], atol=1e-9), key


# ------------------------------------------------------------------ perfect = documented maximum; bounds


@FAST
@given(any_scene())
def test_perfect_prediction_scores_the_maximum(scene):
    gt, _, _ = scene
    assert (
        run("coco_detection", det_answer([o["bbox"] for o in gt], [o["label"] for o in gt]), gt)["score"]
        == MAX["coco_detection"]
    )
    box = gt[0]["bbox"]
    assert run("refcoco", json.dumps([{"bbox_2d": box}]), box)["score"] == MAX["refcoco"]
    points = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in (o["bbox"] for o in gt)]
    assert run("pixmo_count", point_answer(points), points)["score"] == MAX["pixmo_count"]


@FAST
@given(st.text(min_size=1, max_size=300).filter(lambda t: t.strip()), st.text(max_size=300))
@example("<|A|>", "")  # page text shaped like a chat-template special token (hypothesis found it): still 2.0
@example("press <|im_end|> to quit", "<|im_end|>")
def test_ocr_perfect_and_bounds(reference, response):
    assert run("pageocr", reference, reference, {})["score"] == MAX["pageocr"]
    got = run("pageocr", response, reference, {})
    assert MIN["pageocr"] <= got["score"] <= MAX["pageocr"]
    assert 0.0 <= got["accuracy"] <= 1.0


@FAST
@given(any_scene(), st.booleans())
def test_bounds(scene, thinking):
    gt, preds, labels = scene
    answer = det_answer(preds, labels)
    if thinking:
        answer = f"<think>\nlooking\n</think>\n<answer>{answer}</answer>"
    det = run("coco_detection", answer, gt, thinking=str(thinking))
    assert MIN["coco_detection"] <= det["score"] <= MAX["coco_detection"]
    for key in ("format", "location", "classification", "recall", "missing"):
        assert 0.0 <= det[key] <= 1.0, key
    ground = run("refcoco", answer, gt[0]["bbox"], thinking=str(thinking))
    assert MIN["refcoco"] <= ground["score"] <= MAX["refcoco"] and 0 <= ground["iou"] <= 1
    points = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in (o["bbox"] for o in gt)]
    count = run("pixmo_count", answer, points, thinking=str(thinking))
    assert MIN["pixmo_count"] <= count["score"] <= MAX["pixmo_count"] and 0 <= count["location"] <= 1


# ------------------------------------------------------------------ moving closer never lowers the score


@FAST
@given(any_box(), st.floats(-300, 300), st.floats(-300, 300), st.floats(0, 1), st.floats(0, 1), st.sampled_from(LABELS))
def test_box_moving_closer_never_lowers_the_score(gt, dx, dy, t1, t2, label):
    near, far = sorted((t1, t2))

    def moved(t):
        return [gt[0] + t * dx, gt[1] + t * dy, gt[2] + t * dx, gt[3] + t * dy]

    objects = [{"bbox": gt, "label": "cat"}]
    for source, truth, answer in (
        ("refcoco", gt, lambda b: json.dumps([{"bbox_2d": b}])),
        ("coco_detection", objects, lambda b: det_answer([b], [label])),
        ("pixmo_count", [[(gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2]], lambda b: det_answer([b], [label])),
    ):
        assert (
            run(source, answer(moved(near)), truth)["score"] >= run(source, answer(moved(far)), truth)["score"] - 1e-12
        )


@FAST
@given(cell_scene(), st.data())
def test_one_of_many_boxes_moving_closer_never_lowers_the_score(scene, data):
    gt, _, _ = scene
    preds = [list(o["bbox"]) for o in gt]
    labels = [o["label"] for o in gt]
    k = data.draw(st.integers(0, len(gt) - 1))
    start = data.draw(cell_box(next(c for c in range(12) if _in_cell(gt[k]["bbox"], c))))
    near, far = sorted((data.draw(st.floats(0, 1)), data.draw(st.floats(0, 1))))

    def with_k(t):
        out = [list(p) for p in preds]
        out[k] = [(1 - t) * g + t * s for g, s in zip(gt[k]["bbox"], start, strict=True)]  # stays inside the cell
        return out

    assert run("coco_detection", det_answer(with_k(near), labels), gt)["score"] >= (
        run("coco_detection", det_answer(with_k(far), labels), gt)["score"] - 1e-12
    )


def _in_cell(box, cell):
    cx, cy = (cell % 4) * CELL, (cell // 4) * CELL
    return cx <= box[0] and box[2] <= cx + CELL and cy <= box[1] and box[3] <= cy + CELL


@FAST
@given(st.lists(st.integers(0, 11), min_size=1, max_size=6, unique=True), offsets, st.floats(0, 1), st.floats(0, 1))
def test_point_moving_closer_never_lowers_the_score(cells, offset, t1, t2):
    gt = [centre_point(c, 0, 0) for c in cells]
    near, far = sorted((t1, t2))

    def moved(t):
        return [gt[0][0] + t * offset[0], gt[0][1] + t * offset[1]]

    assert run("pixmo_count", point_answer([moved(near)] + gt[1:]), gt)["score"] >= (
        run("pixmo_count", point_answer([moved(far)] + gt[1:]), gt)["score"] - 1e-12
    )


# ------------------------------------------------------------------ duplicates never help


@FAST
@given(cell_scene(), st.data())
def test_duplicating_a_box_never_raises_the_score(scene, data):
    gt, preds, labels = scene
    if not preds:
        preds, labels = [gt[0]["bbox"]], [gt[0]["label"]]
    k = data.draw(st.integers(0, len(preds) - 1))
    base = run("coco_detection", det_answer(preds, labels), gt)
    dup = run("coco_detection", det_answer(preds + [preds[k]], labels + [labels[k]]), gt)
    assert dup["score"] <= base["score"] + 1e-12
    everything = run("coco_detection", det_answer(preds * 2, labels * 2), gt)
    assert everything["score"] <= base["score"] + 1e-12
    ground = gt[0]["bbox"]
    assert (
        run("refcoco", det_answer([preds[k]] * 2, ["x"] * 2), ground)["score"]
        <= (run("refcoco", det_answer([preds[k]], ["x"]), ground)["score"])
    )


@FAST
@given(
    st.lists(st.integers(0, 11), min_size=1, max_size=6, unique=True),
    st.lists(st.tuples(st.integers(0, 11), offsets), min_size=1, max_size=8),
    st.data(),
)
def test_duplicating_a_point_never_raises_the_score(gt_cells, pred_spec, data):
    gt = [centre_point(c, 0, 0) for c in gt_cells]
    preds = [centre_point(c, *o) for c, o in pred_spec]
    k = data.draw(st.integers(0, len(preds) - 1))
    base = run("pixmo_count", point_answer(preds), gt)
    dup = run("pixmo_count", point_answer(preds + [preds[k]]), gt)
    if dup["count"] > base["count"]:
        # the repeat made the count right, and the counting benchmark (which counts every point) says so too:
        # the reward follows it, and the unfound object still costs location
        assert count_from_response(point_answer(preds + [preds[k]])) == len(gt)
        assert dup["location"] <= base["location"] + 1e-12
    else:
        assert dup["score"] <= base["score"] + 1e-12


# ------------------------------------------------------------------ empty or garbage = minimum


@FAST
@given(any_scene(), garbage_text, st.booleans())
def test_empty_or_garbage_scores_the_minimum(scene, garbage, thinking):
    gt, _, _ = scene
    points = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in (o["bbox"] for o in gt)]
    for text in ("", garbage):
        flag = str(thinking)
        assert run("coco_detection", text, gt, thinking=flag)["score"] == MIN["coco_detection"]
        assert run("refcoco", text, gt[0]["bbox"], thinking=flag)["score"] == MIN["refcoco"]
        assert run("pixmo_count", text, points, thinking=flag)["score"] == MIN["pixmo_count"]
        assert run("pixmo_count", text, [], thinking=flag)["score"] == MIN["pixmo_count"]
    assert run("pageocr", "", "some page text", {})["score"] == MIN["pageocr"]
    assert run("pageocr", " \n\t ", "some page text", {})["score"] == MIN["pageocr"]


# ------------------------------------------------------------------ matching = brute force


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 5), st.integers(0, 5), st.data())
def test_hungarian_equals_brute_force(n, m, data):
    values = data.draw(st.lists(st.floats(0, 1), min_size=n * m, max_size=n * m))
    score = np.asarray(values, dtype=float).reshape(n, m)
    best = 0.0
    k = min(n, m)
    for rows in itertools.permutations(range(n), k):
        for cols in itertools.permutations(range(m), k):
            best = max(best, float(sum(score[i, j] for i, j in zip(rows, cols, strict=True))))
    assert abs(hungarian_match(score).total - best) < 1e-9
