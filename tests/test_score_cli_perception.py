"""The four perception tasks through ``perception-r1 score`` (a real subprocess) on real COCO and OCR data.

Checks, per coordinate frame (``--set coord_frame=…``): the output rows carry ``score`` plus each task's named
components, equal the in-process scorer's numbers, and order perfect > perturbed > garbage. Bad rows exit 2 with
the line and field named, and nothing is written.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perception_r1.rewards.boxes import COORD_FRAMES, from_original
from perception_r1.rewards.registry import get_task
from perception_r1.scoring import RewardScorer, ScoreRow

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PERCEPTION_R1_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "perception_r1", "score", *args], capture_output=True, text=True, env=env, cwd=REPO
    )


def answer(boxes, labels, frame, size, max_pixels=None) -> str:
    limits = {"max_pixels": max_pixels} if max_pixels else {}
    coords = from_original(np.asarray(boxes, dtype=float).reshape(-1, 4), frame, size, **limits)
    items = []
    for box, label in zip(coords, labels, strict=True):
        values = [round(float(v), 2) for v in box] if frame == "absolute" else [int(round(v)) for v in box]
        items.append({"bbox_2d": values, **({"label": label} if label else {})})
    return "```json\n" + json.dumps(items) + "\n```"


def real_rows(shared_data: Path, frame: str, max_pixels: int | None) -> list[dict]:
    """perfect / perturbed / garbage rows for every task from the real COCO images and OCR pages."""
    data = json.loads((shared_data / "coco" / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    rows: list[dict] = []
    for image in data["images"]:
        size = [image["width"], image["height"]]
        extra = {"image_size": size, "image_id": image["id"]}
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        labels = [names[a["category_id"]] for a in anns]
        shifted = [[b[0] + 0.5 * (b[2] - b[0]), b[1], b[2] + 0.5 * (b[2] - b[0]), b[3]] for b in boxes]
        objects = [{"bbox": b, "label": lab} for b, lab in zip(boxes, labels, strict=True)]
        centres = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in boxes]
        for kind, response in (
            ("perfect", answer(boxes, labels, frame, size, max_pixels)),
            ("perturbed", answer(shifted, labels, frame, size, max_pixels)),
            ("garbage", "There are some objects in this picture."),
        ):
            rows.append(
                {
                    "data_source": "coco_detection",
                    "response": response,
                    "ground_truth": objects,
                    "extra_info": extra,
                    "kind": kind,
                }
            )
            rows.append(
                {
                    "data_source": "pixmo_count",
                    "response": response,
                    "ground_truth": centres,
                    "extra_info": extra,
                    "kind": kind,
                }
            )
        ground_perfect = answer(boxes[:1], [None], frame, size, max_pixels)
        ground_shift = answer(shifted[:1], [None], frame, size, max_pixels)
        for kind, response in (("perfect", ground_perfect), ("perturbed", ground_shift), ("garbage", "left")):
            rows.append(
                {
                    "data_source": "refcoco",
                    "response": response,
                    "ground_truth": boxes[0],
                    "extra_info": extra,
                    "kind": kind,
                }
            )
    for line in (shared_data / "ocr" / "pages.jsonl").read_text().splitlines():
        page = json.loads(line)
        text = (shared_data / "ocr" / page["text"]).read_text(encoding="utf-8")
        words = text.split()
        for kind, response in (
            ("perfect", " ".join(words)),
            ("perturbed", " ".join(words[: len(words) * 2 // 3])),
            ("garbage", ""),
        ):
            extra = {"image_size": [page["width"], page["height"]]}
            rows.append(
                {
                    "data_source": "pageocr",
                    "response": response,
                    "ground_truth": text,
                    "extra_info": extra,
                    "kind": kind,
                }
            )
    return rows


@pytest.mark.parametrize("frame", COORD_FRAMES)
def test_plumbing_score_cli_matches_the_in_process_scorer_and_orders_rows(shared_data, tmp_path, frame):
    """Plumbing (CLI == in-process scorer: one engine, so only the wiring is proved) plus the ordering per task.

    The values themselves are checked against the reward definitions in the next test.
    """
    max_pixels = 1003520 if frame == "qwen2_5_vl" else None
    rows = real_rows(shared_data, frame, max_pixels)
    src = tmp_path / "rollouts.jsonl"
    src.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "kind"}) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    sets = [f"coord_frame={frame}"] + ([f"max_pixels={max_pixels}", "min_pixels=3136"] if max_pixels else [])
    proc = cli("--input", str(src), "--output", str(out), "--set", *sets)
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(got) == len(rows)

    # same numbers as the in-process scorer (the training path)
    settings = {"coord_frame": frame, **({"max_pixels": str(max_pixels)} if max_pixels else {})}
    scorer = RewardScorer(settings, workers=1)
    try:
        expected = asyncio.run(
            scorer.score_many(
                ScoreRow(r["data_source"], r["response"], r["ground_truth"], r["extra_info"]) for r in rows
            )
        )
    finally:
        scorer.close()
    for row, values, want in zip(rows, got, expected, strict=True):
        assert list(values) == ["score", *get_task(row["data_source"]).output_keys]
        assert values == pytest.approx(want.values)

    for source in ("coco_detection", "pixmo_count", "refcoco", "pageocr"):
        scores = {
            k: [v["score"] for r, v in zip(rows, got, strict=True) if r["data_source"] == source and r["kind"] == k]
            for k in ("perfect", "perturbed", "garbage")
        }
        assert min(scores["perfect"]) > max(scores["perturbed"]), source
        assert min(scores["perturbed"]) > max(scores["garbage"]), source
        assert len(set(scores["garbage"])) == 1, source  # garbage is the one minimum
    perfect_det = [
        v for r, v in zip(rows, got, strict=True) if r["data_source"] == "coco_detection" and r["kind"] == "perfect"
    ]
    # integer coordinates of the Qwen frames can cost a small box AP's 0.95 IoU threshold (ap_aligned credit)
    tolerance = 0.0 if frame == "absolute" else 0.1
    assert all(v["recall"] >= 1.0 - tolerance and v["classification"] >= 1.0 - tolerance for v in perfect_det)
    assert all(v["missing"] <= tolerance for v in perfect_det)


def test_score_cli_values_equal_the_reward_definitions(shared_data, tmp_path):
    """Absolute frame, values derived by hand from each task's definition, not from the engine.

    OCR: the perturbed answer is a prefix of the page's words, so its Levenshtein distance is the deleted length
    and ``accuracy = len(prefix) / len(page)``; grounding: the box shifted right by half its width overlaps half
    of it, ``IoU = 0.5 / 1.5 = 1/3``, scored ``format + IoU²``; a perfect detection scores ``1 + 1 + 1 + 1 - 0``.
    """
    rows = real_rows(shared_data, "absolute", None)
    src = tmp_path / "rollouts.jsonl"
    src.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "kind"}) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    proc = cli("--input", str(src), "--output", str(out), "--set", "coord_frame=absolute")
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    checked = 0
    for row, values in zip(rows, got, strict=True):
        source, kind = row["data_source"], row["kind"]
        if source == "pageocr":
            page = " ".join(row["ground_truth"].split())
            accuracy = {"perfect": 1.0, "perturbed": len(row["response"]) / len(page), "garbage": 0.0}[kind]
            assert values["accuracy"] == pytest.approx(accuracy, abs=1e-12), kind
            assert values["score"] == pytest.approx((kind != "garbage") + accuracy, abs=1e-12), kind
        elif source == "refcoco":
            iou = {"perfect": 1.0, "perturbed": 1 / 3, "garbage": 0.0}[kind]
            assert values["iou"] == pytest.approx(iou, abs=1e-3), kind
            assert values["score"] == pytest.approx((kind != "garbage") + iou**2, abs=2e-3), kind
        elif source == "coco_detection" and kind == "perfect":
            assert values["score"] == pytest.approx(4.0, abs=1e-6)
        elif source == "coco_detection" and kind == "garbage":
            assert values["format"] == 0.0 and values["recall"] == 0.0
        else:
            continue
        checked += 1
    assert checked >= 20


def test_wrong_frame_is_worse(shared_data, tmp_path):
    """Predictions written in qwen2_vl thousandths but scored as absolute pixels miss their objects."""
    rows = [
        r
        for r in real_rows(shared_data, "qwen2_vl", None)
        if r["data_source"] == "coco_detection" and r["kind"] == "perfect"
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "kind"}) + "\n" for r in rows))
    right, wrong = tmp_path / "right.jsonl", tmp_path / "wrong.jsonl"
    assert cli("--input", str(src), "--output", str(right), "--set", "coord_frame=qwen2_vl").returncode == 0
    assert cli("--input", str(src), "--output", str(wrong), "--set", "coord_frame=absolute").returncode == 0
    right_scores = [json.loads(x)["score"] for x in right.read_text().splitlines()]
    wrong_scores = [json.loads(x)["score"] for x in wrong.read_text().splitlines()]
    assert all(r > w + 1.0 for r, w in zip(right_scores, wrong_scores, strict=True))


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {
                "data_source": "refcoco",
                "response": "",
                "ground_truth": [1, 2, 3],
                "extra_info": {"image_size": [10, 10]},
            },
            "ground_truth",
        ),
        (
            {"data_source": "refcoco", "response": "", "ground_truth": [1, 2, 3, 4], "extra_info": {}},
            "extra_info.image_size",
        ),
        (
            {
                "data_source": "coco_detection",
                "response": "",
                "ground_truth": [{"bbox": [1, 2, 3, 4]}],
                "extra_info": {"image_size": [10, 10]},
            },
            r"ground_truth[0].label",
        ),
        (
            {
                "data_source": "pixmo_count",
                "response": "",
                "ground_truth": [[1, "a"]],
                "extra_info": {"image_size": [10, 10]},
            },
            r"ground_truth[0]",
        ),
        ({"data_source": "pageocr", "response": "", "ground_truth": "", "extra_info": {}}, "ground_truth"),
    ],
)
def test_score_cli_bad_ground_truth_exits_2(tmp_path, row, message):
    good = {"data_source": "pageocr", "response": "x", "ground_truth": "x", "extra_info": {}}
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    out = tmp_path / "out.jsonl"
    proc = cli("--input", str(src), "--output", str(out))
    assert proc.returncode == 2
    assert f"{src}:2" in proc.stderr and message in proc.stderr
    assert not out.exists()


def test_score_cli_bad_frame_setting(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"data_source": "pageocr", "response": "x", "ground_truth": "x", "extra_info": {}}) + "\n"
    )
    proc = cli("--input", str(src), "--output", str(tmp_path / "out.jsonl"), "--set", "coord_frame=yolo")
    assert proc.returncode == 2 and "coord_frame" in proc.stderr
