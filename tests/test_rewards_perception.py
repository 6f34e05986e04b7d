"""The four perception tasks: unit behaviour, validation errors, and real COCO / OCR data in every frame."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rapidfuzz.distance import Levenshtein

from perception_r1.rewards import counting, detection, grounding, ocr
from perception_r1.rewards.boxes import COORD_FRAMES, from_original
from perception_r1.rewards.registry import build_settings, get_task
from perception_r1.scoring import RewardScorer, ScoreRow

SIZE = {"image_size": [640, 480]}


def score(data_source: str, response: str, ground_truth, extra_info=SIZE, **overrides) -> dict:
    """One row through the task's pure functions (validate, rule_components, combine)."""
    task = get_task(data_source)
    settings = build_settings(task.settings, overrides)
    task.validate(ground_truth, extra_info)
    components = task.rule_components(response, ground_truth, extra_info, settings)
    assert set(components) == set(task.output_keys)
    return {"score": task.combine(components, settings), **components}


def box_answer(boxes, labels=None, frame="absolute", size=(640, 480), rounded=None, **limits) -> str:
    """A model answer in ``frame`` (integers for the Qwen frames, as the models write them)."""
    coords = from_original(np.asarray(boxes, dtype=float).reshape(-1, 4), frame, size, **limits)
    rounded = frame != "absolute" if rounded is None else rounded
    items = []
    for i, box in enumerate(coords):
        values = [int(round(v)) for v in box] if rounded else [float(v) for v in box]
        item = {"bbox_2d": values}
        if labels is not None:
            item["label"] = labels[i]
        items.append(item)
    return "```json\n" + json.dumps(items) + "\n```"


def point_answer(points, frame="absolute", size=(640, 480)) -> str:
    coords = from_original(np.asarray(points, dtype=float).reshape(-1, 2), frame, size)
    values = [[int(round(v)) for v in p] if frame != "absolute" else [float(v) for v in p] for p in coords]
    return json.dumps([{"point_2d": p, "label": "object"} for p in values])


# ------------------------------------------------------------------ grounding


def test_grounding_scores():
    gt = [100, 100, 200, 200]
    perfect = score("refcoco", "[100, 100, 200, 200]", gt, coord_frame="absolute")
    assert perfect == {"score": 2.0, "format": 1.0, "iou": 1.0, "n_pred": 1, "dropped": 0, "over_cap": 0}
    half = score("refcoco", "[150, 100, 250, 200]", gt, coord_frame="absolute")
    # IoU² by default, as the released Perception-R1 grounding reward
    assert half["iou"] == pytest.approx(1 / 3) and half["score"] == pytest.approx(1 + 1 / 9)
    plain = score("refcoco", "[150, 100, 250, 200]", gt, coord_frame="absolute", iou_squared="false")
    assert plain["score"] == pytest.approx(1 + 1 / 3)
    # qwen2_vl frame: thousandths of the 640x480 image
    special = "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(156,208),(312,416)<|box_end|>"
    assert score("refcoco", special, gt)["iou"] == pytest.approx(1.0, abs=0.01)
    # two boxes: the first one is scored, as the benchmark (Acc@0.5) reads it; the format holds
    two = score("refcoco", "[100, 100, 200, 200] [0, 0, 10, 10]", gt, coord_frame="absolute")
    assert two["format"] == 1.0 and two["iou"] == 1.0 and two["n_pred"] == 2
    assert score("refcoco", "no idea", gt)["score"] == 0.0
    assert score("refcoco", "", gt)["score"] == 0.0


def test_grounding_thinking_template():
    gt = [100, 100, 200, 200]
    good = "<think>\nThe dog is on the left.\n</think>\n<answer>[100, 100, 200, 200]</answer>"
    assert score("refcoco", good, gt, coord_frame="absolute", thinking="true")["score"] == 2.0
    assert score("refcoco", "[100, 100, 200, 200]", gt, coord_frame="absolute", thinking="true")["format"] == 0.0
    assert score("refcoco", good, gt, coord_frame="absolute")["format"] == 1.0  # no-thinking reads the whole text


@pytest.mark.parametrize(
    "ground_truth, extra_info, field",
    [
        ([1, 2, 3], SIZE, "ground_truth"),
        ([3, 2, 1, 4], SIZE, "ground_truth"),
        (["a", 2, 3, 4], SIZE, "ground_truth"),
        ([1, 2, 3, 4], {}, "extra_info.image_size"),
        ([1, 2, 3, 4], {"image_size": [640, -1]}, "extra_info.image_size"),
    ],
)
def test_grounding_validation(ground_truth, extra_info, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        grounding.validate(ground_truth, extra_info)


# ------------------------------------------------------------------ counting


def test_counting_scores():
    gt = [[100, 100], [300, 200], [500, 400]]
    perfect = score("pixmo_count", point_answer(gt), gt, coord_frame="absolute")
    assert perfect["score"] == 3.0 and perfect["count"] == 1.0 and perfect["location"] == 1.0
    # boxes count through their centres
    boxes = [[p[0] - 10, p[1] - 10, p[0] + 10, p[1] + 10] for p in gt]
    assert score("pixmo_count", box_answer(boxes), gt, coord_frame="absolute")["score"] == 3.0
    # a missing point costs location 1/3 and the exact count
    two = score("pixmo_count", point_answer(gt[:2]), gt, coord_frame="absolute")
    assert two["location"] == pytest.approx(2 / 3) and two["count"] == 0.0
    # an extra far point costs the same share
    four = score("pixmo_count", point_answer(gt + [[600, 50]]), gt, coord_frame="absolute")
    assert four["location"] == pytest.approx(3 / 4)
    # a pair scores by distance relative to the diagonal (800 px): 40 px off with scale 0.1 -> 0.5
    off = score("pixmo_count", point_answer([[100, 140]]), [[100, 100]], coord_frame="absolute")
    assert off["location"] == pytest.approx(0.5)
    assert score("pixmo_count", "I count three.", gt)["score"] == 0.0
    # zero objects: "[]" is right, unreadable text is not
    assert score("pixmo_count", "[]", [])["score"] == 3.0
    assert score("pixmo_count", "nothing here", [])["score"] == 0.0


def test_counting_validation():
    counting.validate([], SIZE)
    counting.validate("[[1, 2]]", SIZE)
    with pytest.raises(ValueError, match=r"ground_truth\[1\]"):
        counting.validate([[1, 2], [3]], SIZE)
    with pytest.raises(ValueError, match="ground_truth"):
        counting.validate(5, SIZE)
    with pytest.raises(ValueError, match="extra_info.image_size"):
        counting.validate([[1, 2]], {})


# ------------------------------------------------------------------ OCR


def test_ocr_scores():
    assert score("pageocr", "Hello  world\n", "Hello\nworld", {})["score"] == 2.0
    one_typo = score("pageocr", "Hello world", "Hallo world", {})
    assert one_typo["accuracy"] == pytest.approx(1 - 1 / 11)
    assert score("pageocr", "", "Hello", {})["score"] == 0.0
    assert score("pageocr", "<|im_end|>", "Hello", {})["format"] == 0.0
    assert score("pageocr", "hello", "Hello", {}, case_sensitive="false")["accuracy"] == 1.0
    with pytest.raises(ValueError, match="ground_truth"):
        ocr.validate("  ", {})


# ------------------------------------------------------------------ detection


GT_DET = [
    {"bbox": [10, 10, 110, 110], "label": "cat"},
    {"bbox": [200, 200, 300, 300], "label": "dog"},
    {"bbox": [400, 100, 500, 250], "label": "traffic light"},
]


def test_detection_scores():
    boxes = [o["bbox"] for o in GT_DET]
    labels = [o["label"] for o in GT_DET]
    perfect = score("coco_detection", box_answer(boxes, labels), GT_DET, coord_frame="absolute")
    assert perfect["score"] == 4.0
    assert (perfect["location"], perfect["classification"], perfect["recall"], perfect["missing"]) == (1, 1, 1, 0)
    # a wrong label matches nothing (COCO AP's rule): the object counts as missed and the box as extra
    wrong = score("coco_detection", box_answer(boxes, ["cat", "cat", "Traffic_Light"]), GT_DET, coord_frame="absolute")
    assert wrong["classification"] == pytest.approx(2 / 3) and wrong["recall"] == pytest.approx(2 / 3)
    assert wrong["location"] == pytest.approx(2 / 3) and wrong["missing"] == pytest.approx(1 / 3)
    # a missing object
    two = score("coco_detection", box_answer(boxes[:2], labels[:2]), GT_DET, coord_frame="absolute")
    assert two["missing"] == pytest.approx(1 / 3) and two["recall"] == pytest.approx(0.8)
    # boxes without labels break the format
    assert score("coco_detection", box_answer(boxes), GT_DET, coord_frame="absolute")["format"] == 0.0
    assert score("coco_detection", "garbage", GT_DET)["score"] == -1.0
    assert score("coco_detection", "", GT_DET)["score"] == -1.0
    assert score("coco_detection", "[]", GT_DET)["score"] == 0.0  # format only
    assert score("coco_detection", "[]", [])["score"] == 4.0


def test_detection_validation():
    with pytest.raises(ValueError, match=r"ground_truth\[0\]\.label"):
        detection.validate([{"bbox": [1, 2, 3, 4], "label": ""}], SIZE)
    with pytest.raises(ValueError, match=r"ground_truth\[1\]\.bbox"):
        detection.validate([{"bbox": [1, 2, 3, 4], "label": "cat"}, {"bbox": [1, 2], "label": "dog"}], SIZE)
    with pytest.raises(ValueError, match=r"ground_truth\[0\]"):
        detection.validate([[1, 2, 3, 4]], SIZE)
    with pytest.raises(ValueError, match="extra_info.image_size"):
        detection.validate([], {"image_size": None})


def test_settings_share_names():
    shared = {"coord_frame", "min_pixels", "max_pixels", "max_predictions", "thinking", "format_weight"}
    for source in ("refcoco", "pixmo_count", "pageocr", "coco_detection"):
        fields = set(get_task(source).settings.__dataclass_fields__)
        assert shared <= fields, source
    with pytest.raises(ValueError, match="coord_frame"):
        build_settings(get_task("refcoco").settings, {"coord_frame": "yolo"})


# ------------------------------------------------------------------ real data: COCO and OCR pages


def coco_rows(shared_data: Path) -> list[dict]:
    """One detection row per real COCO image, sizes checked against the image files."""
    data = json.loads((shared_data / "coco" / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    rows = []
    for image in data["images"]:
        with Image.open(shared_data / "coco" / "images" / image["file_name"]) as im:
            assert im.size == (image["width"], image["height"])
        objects = [
            {
                "bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                "label": names[a["category_id"]],
            }
            for a in data["annotations"]
            if a["image_id"] == image["id"]
        ]
        rows.append({"size": [image["width"], image["height"]], "objects": objects})
    return rows


def run_scorer(rows: list[ScoreRow], settings: dict) -> list[dict]:
    scorer = RewardScorer(settings, workers=1)
    try:
        return [r.values for r in asyncio.run(scorer.score_many(rows))]
    finally:
        scorer.close()


def shifted(box, fraction):
    w = box[2] - box[0]
    return [box[0] + fraction * w, box[1], box[2] + fraction * w, box[3]]


@pytest.mark.parametrize("frame", COORD_FRAMES)
def test_real_coco_detection_in_every_frame(shared_data, frame):
    limits = {"max_pixels": 1003520} if frame == "qwen2_5_vl" else {}
    rows = []
    for item in coco_rows(shared_data):
        boxes = [o["bbox"] for o in item["objects"]]
        labels = [o["label"] for o in item["objects"]]
        extra = {"image_size": item["size"]}
        perturbed = [shifted(b, 0.5) for b in boxes]  # IoU 1/3 each: below the 0.5 match threshold
        for response in (
            box_answer(boxes, labels, frame, item["size"], **limits),
            box_answer(perturbed, labels, frame, item["size"], **limits),
            "I see some animals.",
        ):
            rows.append(ScoreRow("coco_detection", response, item["objects"], extra))
    settings = {"coord_frame": frame, **{k: str(v) for k, v in limits.items()}}
    values = run_scorer(rows, settings)
    for i in range(0, len(values), 3):
        perfect, perturbed, garbage = values[i : i + 3]
        # integer coordinates in the Qwen frames cost a little IoU (a small box can miss AP's 0.95 threshold);
        # absolute floats are exact
        exact = frame == "absolute"
        assert perfect["score"] == pytest.approx(4.0, abs=0 if exact else 0.3)
        assert perfect["recall"] == pytest.approx(1.0, abs=0 if exact else 0.1) and perfect["format"] == 1.0
        assert perfect["classification"] == pytest.approx(1.0, abs=0 if exact else 0.1)
        assert perturbed["recall"] == 0.0 and perturbed["missing"] == 1.0 and perturbed["format"] == 1.0
        # IoU 1/3 is a false positive for AP: no location credit either (ap_aligned, the default)
        assert perturbed["location"] == 0.0 and perturbed["score"] == 0.0
        assert garbage["score"] == -1.0
    # the paper's single threshold credits every matched pair's IoU
    paper = run_scorer(rows[1:2], {**settings, "ap_aligned": "false"})[0]
    assert paper["location"] == pytest.approx(1 / 3, abs=0.05) and paper["recall"] == 0.0


@pytest.mark.parametrize("frame", COORD_FRAMES)
def test_real_coco_grounding_and_counting(shared_data, frame):
    rows = []
    for item in coco_rows(shared_data):
        extra = {"image_size": item["size"]}
        for obj in item["objects"][:3]:
            box = obj["bbox"]
            rows.append(ScoreRow("refcoco", box_answer([box], None, frame, item["size"]), box, extra))
            rows.append(ScoreRow("refcoco", box_answer([shifted(box, 0.5)], None, frame, item["size"]), box, extra))
        centres = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in (o["bbox"] for o in item["objects"])]
        rows.append(ScoreRow("pixmo_count", point_answer(centres, frame, item["size"]), centres, extra))
        rows.append(ScoreRow("pixmo_count", point_answer(centres[:-1], frame, item["size"]), centres, extra))
        rows.append(ScoreRow("pixmo_count", "many", centres, extra))
    values = run_scorer(rows, {"coord_frame": frame})
    grounding_rows = [v for r, v in zip(rows, values, strict=True) if r.data_source == "refcoco"]
    for perfect, half in zip(grounding_rows[::2], grounding_rows[1::2], strict=True):
        assert perfect["iou"] > 0.9 and perfect["format"] == 1.0
        assert half["iou"] == pytest.approx(1 / 3, abs=0.05)
    counting_rows = [v for r, v in zip(rows, values, strict=True) if r.data_source == "pixmo_count"]
    for perfect, missing, garbage in zip(counting_rows[::3], counting_rows[1::3], counting_rows[2::3], strict=True):
        assert perfect["score"] == pytest.approx(3.0, abs=0.02) and perfect["count"] == 1.0
        assert missing["count"] == 0.0 and missing["score"] < perfect["score"] - 1.0
        assert garbage["score"] == 0.0


def test_real_ocr_pages(shared_data):
    pages = [
        json.loads(line) for line in (shared_data / "ocr" / "pages.jsonl").read_text().splitlines() if line.strip()
    ]
    assert len(pages) == 5
    rows = []
    references = []
    for page in pages:
        text = (shared_data / "ocr" / page["text"]).read_text(encoding="utf-8")
        references.append(text)
        words = text.split()
        reflowed = "\n".join(" ".join(words[i : i + 7]) for i in range(0, len(words), 7))  # same words, new lines
        dropped = " ".join(w for i, w in enumerate(words) if i % 10 != 3)  # every tenth word lost
        for response in (reflowed, dropped, "", "<think>lorem ipsum</think>"):
            rows.append(ScoreRow("pageocr", response, text, {"image_size": [page["width"], page["height"]]}))
    values = run_scorer(rows, {})
    for k, reference in enumerate(references):
        perfect, dropped, empty, garbage = values[4 * k : 4 * k + 4]
        assert perfect == {"score": 2.0, "format": 1.0, "accuracy": 1.0, "n_chars": len(" ".join(reference.split()))}
        expected = 1 - Levenshtein.distance(rows[4 * k + 1].response, " ".join(reference.split())) / max(
            len(rows[4 * k + 1].response), len(" ".join(reference.split()))
        )
        assert dropped["accuracy"] == pytest.approx(expected)
        assert 0.75 < dropped["accuracy"] < 0.97
        assert empty["score"] == 0.0
        assert garbage["accuracy"] < 0.1
    assert all(math.isfinite(v["score"]) for v in values)
