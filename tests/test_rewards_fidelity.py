"""Reward fidelity (issue 10): the papers' deliberate choices are the defaults, documented deviations are tested.

Points: (1) no complete answer block -> the last ``\\boxed{}`` of the response; (2) an answer block without a box
is read as free text; (5) counting duplicates never buy the count; (6) detection matches within categories;
(7) format leniency; (8) every row is scored in the frame its data was built for; (9) the ``<perception>``
template; plus ``--set preset=paper``. Responses are real-looking: the original repository's own example outputs
(the judge prompt's worked examples of tongxiao2002/Perception-R1), the shipped geo3k calibration responses, and
answers built from the real COCO annotations in ``../shared/data``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception_r1.cli import main
from perception_r1.eval.perception_metrics import coco_detection_metrics, count_from_response, counting_accuracy
from perception_r1.rewards.boxes import from_original, smart_resize
from perception_r1.rewards.format import format_reward
from perception_r1.rewards.registry import build_settings, check_setting_keys, get_task
from perception_r1.scoring import RewardScorer, ScoreRow

CALIBRATION = Path(__file__).resolve().parents[1] / "perception_r1" / "judge" / "data" / "geo3k_calibration.jsonl"

# The original repository's own example responses (its judge prompt's worked examples; excerpts, verbatim).
ORIGINAL_F = (
    "Since \\( \\overline{JK} \\) and \\( \\overline{ML} \\) are opposite sides of the parallelogram, we have:\n"
    "\\[ 3f - 6 = 2f + 8 \\]\n\nNext, we solve for \\( f \\):\n1. Subtract \\( 2f \\) from both sides:\n"
    "\\[ 3f - 2f - 6 = 8 \\]\n\\[ f - 6 = 8 \\]\n\n2. Add 6 to both sides:\n\\[ f = 8 + 6 \\]\n\\[ f = 14 \\]\n\n"
    "Thus, the value of \\( f \\) is \\(\\boxed{14}\\).\n"
)
ORIGINAL_S = (
    "Now, we can find \\( \\angle S \\):\n\\[\n\\angle S = x = 71^\\circ\n\\]\n\n"
    "Thus, the measure of \\( \\angle S \\) is:\n\\[\n\\boxed{71^\\circ}\n\\]\n"
)
ORIGINAL_NO_BOX = (  # the third example: the response stops before any answer
    "Since angle A is a right angle, we have:\n\\[ 4x + 5 = 90 \\]\nSolving for \\( x \\):\n\\[ 4x = 85 \\]\n"
    "\\[ x = \\frac{85}{4} = 21.25 \\]\n"
)


def geo_rows(pairs: list[tuple[str, str]]) -> list[ScoreRow]:
    return [ScoreRow("geo3k_visual", response, truth, {}) for response, truth in pairs]


def run(rows: list[ScoreRow], overrides: dict | None = None) -> list[dict]:
    scorer = RewardScorer(overrides or {}, workers=1)

    async def go():
        try:
            return await scorer.score_many(rows)
        finally:
            await scorer.aclose()

    try:
        return [r.values for r in asyncio.run(go())]
    finally:
        scorer.close()


def calibration() -> list[dict]:
    return [json.loads(line) for line in CALIBRATION.read_text(encoding="utf-8").splitlines() if line.strip()]


def answers(shared_data: Path) -> dict[int, str]:
    lines = (shared_data / "geometry3k" / "problems.jsonl").read_text(encoding="utf-8").splitlines()
    return {int(r["id"]): r["answer"] for r in map(json.loads, lines)}


# ------------------------------------------------------------------ (1) no complete answer block


def test_no_answer_block_falls_back_to_the_last_box(shared_data):
    truth = answers(shared_data)
    cut = next(r for r in calibration() if r["problem_id"] == 14 and r["kind"] == "state")["response"]
    cut = cut[: cut.index("</answer>")].rstrip()  # the reply ran out of tokens before </answer>
    rows = geo_rows(
        [
            ("The answer is \\boxed{5}.", "5"),  # the example
            (ORIGINAL_F, "14"),
            (ORIGINAL_S, "71"),
            (cut, truth[14]),
            (ORIGINAL_NO_BOX, "21.25"),  # no box anywhere: nothing to check (no parse-everything guess)
            ("<think>\n\\boxed{99}\n</think>\n<answer>\n\\boxed{13}\n</answer>", "13"),  # the block wins
        ]
    )
    out = run(rows)
    assert [v["accuracy"] for v in out] == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert [v["format"] for v in out[:5]] == [0.0] * 5  # the fallback never pays the format
    assert out[0]["score"] == pytest.approx(0.9)
    strict = run(rows[:4], {"answer_fallback": "false"})
    assert [v["accuracy"] for v in strict] == [0.0] * 4


# ------------------------------------------------------------------ (2) an answer block without a box


def test_answer_block_without_box_is_read_as_free_text(shared_data):
    truth = answers(shared_data)
    think = "<think>\nBy the secant-secant theorem 5(5 + x) = 90, so x = 13.\n</think>\n"
    rows = geo_rows(
        [
            ("<answer>\nThe answer is 5\n</answer>", "5"),  # the example
            (think + "<answer>\nThe answer is 13.\n</answer>", truth[12]),
            (think + "<answer>\nx = 13\n</answer>", truth[12]),
            ("<think>\nm∠S = x\n</think>\n<answer>\nThe measure of angle S is 71 degrees.\n</answer>", "71"),
            ("<think>\n.\n</think>\n<answer>\n5\\sqrt{3}\n</answer>", truth[15]),  # a bare expression still reads
            ("<think>\n.\n</think>\n<answer>\nAB = 5\\sqrt{3}\n</answer>", truth[15]),
            ("<think>\n.\n</think>\n<answer>\nThe length is $\\frac{2\\sqrt{2}}{5}$.\n</answer>", truth[19]),
            (think + "<answer>\nThe answer is 14.\n</answer>", truth[12]),  # wrong stays wrong
        ]
    )
    out = run(rows)
    assert [v["accuracy"] for v in out] == [1.0] * 7 + [0.0]
    assert all(v["format"] == 0.0 for v in out)  # no \boxed: format 0


# ------------------------------------------------------------------ (7) format leniency


GOOD = "<think>\nAB = 5 and BC = 12, so AC = 13.\n</think>\n<answer>\n\\boxed{13}\n</answer>"


def test_format_leniency_decided():
    rows = geo_rows(
        [
            (GOOD, "13"),
            (GOOD.replace("\\boxed{13}", "\\boxed{}"), "13"),  # an empty box
            (GOOD.replace("AB = 5 and BC = 12, so AC = 13.\n", ""), "13"),  # <think>\n</think>
            (GOOD.replace("AB = 5 and BC = 12, so AC = 13.", ""), "13"),  # <think>\n\n</think>
            (GOOD.replace("\\boxed{13}", "\\fbox{13}"), "13"),  # not what the prompt asks
            (GOOD + "\n", "13"),  # a trailing newline
            (GOOD.replace("<think>\nAB", "<think>\n<answer>AB"), "13"),  # a repeated tag inside the reasoning
        ]
    )
    strict = run(rows)
    assert [v["format"] for v in strict] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    # a right answer in an \fbox keeps its accuracy (the evaluation reads \fbox): only the format teaches \boxed,
    # so it never ranks below a wrong answer in a \boxed (0.1 format), which the benchmark scores worse
    wrong_boxed = run(geo_rows([(GOOD.replace("{13}", "{14}"), "13")]))[0]
    assert strict[4]["accuracy"] == 1.0 and strict[4]["score"] > wrong_boxed["score"]
    paper = run(rows, {"preset": "paper"})  # the original regex exactly
    assert [v["format"] for v in paper] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]


THINK_REGEX = re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\\boxed{.+?}.*?\n</answer>$", re.DOTALL)
PERCEPTION_REGEX = re.compile(
    r"^<perception>\n.*?\n</perception>\n<think>\n.*?\n</think>\n<answer>\n.*?\\boxed{.+?}.*?\n</answer>$", re.DOTALL
)
PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<perception>", "</perception>", "\n", "\\boxed{", "}", "x"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=24))
def test_paper_rule_is_the_original_regex(pieces):
    text = "".join(pieces)
    for template, regex in (("think", THINK_REGEX), ("perception", PERCEPTION_REGEX)):
        expected = 1.0 if regex.fullmatch(text) else 0.0
        assert format_reward(text, template, "paper") == expected, (template, text)


# ------------------------------------------------------------------ (9) the <perception> template


PERCEIVED = (
    "<perception>\nAB = 5, BD = x, AC = 7.5, CE = 4.5; two secants from A.\n</perception>\n"
    "<think>\nBy the secant-secant theorem 5(5 + x) = 7.5 · 12 = 90, so x = 13.\n</think>\n"
    "<answer>\n\\boxed{13}\n</answer>"
)


def test_perception_template(tmp_path, shared_data):
    rows = geo_rows([(PERCEIVED, "13"), (GOOD, "13")])
    perception = run(rows, {"template": "perception"})
    assert [v["format"] for v in perception] == [1.0, 0.0]
    assert [v["accuracy"] for v in perception] == [1.0, 1.0]
    assert run(rows[:1])[0]["format"] == 0.0  # the default template is think
    assert format_reward("<perception>\n\n</perception>\n" + GOOD, "perception") == 0.0  # empty perception block
    assert format_reward("<perception>\n\n</perception>\n" + GOOD, "perception", "paper") == 1.0
    # the builder writes a prompt that asks for the template
    out = tmp_path / "geo3k.parquet"
    code = main(["data", "geo3k", "--input", str(shared_data / "geometry3k" / "problems.jsonl"),
                 "--annotations-field", "logic_forms", "--template", "perception", "--limit", "2",
                 "--output", str(out)])  # fmt: skip
    assert code == 0
    prompt = pq.read_table(out).to_pylist()[0]["prompt"][0]["content"]
    assert "<perception> </perception>" in prompt and "<think> </think>" in prompt and "\\boxed{}" in prompt


# ------------------------------------------------------------------ --set preset=paper


def test_preset_paper_pins_each_papers_values():
    geo = build_settings(get_task("geo3k_visual").settings, {"preset": "paper"})
    assert (geo.format_weight, geo.accuracy_weight, geo.visual_weight, geo.format_rule) == (0.1, 0.9, 0.7, "paper")
    det = build_settings(get_task("coco_detection").settings, {"preset": "paper"})
    assert det.format_weight == 1.0 and det.class_aware  # one key, a different value per paper
    ground = build_settings(get_task("refcoco").settings, {"preset": "paper"})
    assert ground.iou_squared and not ground.thinking
    # explicit keys win over the preset
    geo_task = get_task("geo3k_visual")
    assert build_settings(geo_task.settings, {"preset": "paper", "format_rule": "strict"}).format_rule == "strict"
    assert (
        build_settings(get_task("geo3k_visual").settings, {"preset": "paper", "visual_weight": "0.5"}).visual_weight
        == 0.5
    )
    check_setting_keys({"preset": "paper"})
    with pytest.raises(ValueError, match=r"setting 'preset': unknown preset 'papr'; known presets: \['paper'\]"):
        check_setting_keys({"preset": "papr"})
    with pytest.raises(ValueError, match="preset"):
        RewardScorer({"preset": "papr"}, workers=1)


def test_preset_in_the_verl_settings_and_the_score_command(tmp_path):
    from perception_r1.verl_plugin import split_reward_kwargs

    assert split_reward_kwargs({"preset": "paper"})[0] == {"preset": "paper"}
    with pytest.raises(ValueError, match=r"reward.reward_kwargs: setting 'preset': unknown preset 'nope'"):
        split_reward_kwargs({"preset": "nope"})
    src = tmp_path / "rollouts.jsonl"
    lenient = GOOD.replace("AB = 5 and BC = 12, so AC = 13.", "")  # <think>\n\n</think>: the paper's regex takes it
    src.write_text(json.dumps({"data_source": "geo3k_visual", "response": lenient, "ground_truth": "13"}) + "\n")
    outs = {}
    for name, args in (("default", []), ("paper", ["--set", "preset=paper"])):
        out = tmp_path / f"{name}.jsonl"
        proc = subprocess.run(
            [sys.executable, "-m", "perception_r1", "score", "--input", str(src), "--output", str(out), *args],
            capture_output=True,
            text=True,
            env={"PERCEPTION_R1_NO_PROGRESS": "1", "PATH": "/usr/bin:/bin"},
        )
        assert proc.returncode == 0, proc.stderr
        outs[name] = json.loads(out.read_text())
    assert outs["default"]["format"] == 0.0 and outs["paper"]["format"] == 1.0
    proc = subprocess.run(
        [sys.executable, "-m", "perception_r1", "score", "--input", str(src), "--output", str(tmp_path / "x.jsonl"),
         "--set", "preset=papr"],
        capture_output=True, text=True, env={"PERCEPTION_R1_NO_PROGRESS": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 2 and "unknown preset 'papr'" in proc.stderr


# ------------------------------------------------------------------ real COCO rows for (5), (6), (8)


def coco_images(shared_data: Path) -> list[dict]:
    data = json.loads((shared_data / "coco" / "instances.json").read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in data["categories"]}
    out = []
    for image in data["images"]:
        objects = [
            {"bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
             "label": names[a["category_id"]]}
            for a in data["annotations"] if a["image_id"] == image["id"]
        ]  # fmt: skip
        out.append({"id": image["id"], "size": [image["width"], image["height"]], "objects": objects, "data": data})
    return out


def det_answer(boxes, labels, frame="absolute", size=(640, 480), **limits) -> str:
    coords = from_original(np.asarray(boxes, dtype=float).reshape(-1, 4), frame, size, **limits)
    values = coords.round().astype(int).tolist() if frame != "absolute" else coords.tolist()
    return (
        "```json\n"
        + json.dumps([{"bbox_2d": b, "label": lab} for b, lab in zip(values, labels, strict=True)])
        + "\n```"
    )


def score_one(data_source, response, ground_truth, extra_info, **overrides) -> dict:
    task = get_task(data_source)
    s = build_settings(task.settings, {"coord_frame": "absolute", **overrides})
    task.validate(ground_truth, extra_info)
    c = task.rule_components(response, ground_truth, extra_info, s)
    return {"score": task.combine(c, s), **c}


# ------------------------------------------------------------------ (5) counting duplicates


def test_counting_duplicates_never_buy_the_count(shared_data):
    image = next(i for i in coco_images(shared_data) if i["id"] == 9)  # bowl ×3, orange ×4, broccoli
    bowls = [o["bbox"] for o in image["objects"] if o["label"] == "bowl"]
    centres = [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in bowls]
    extra = {"image_size": image["size"]}
    labels = ["bowl"] * 4
    duplicate = det_answer(bowls + [bowls[0]], labels)  # the case: four boxes, one an exact duplicate
    distinct = det_answer(bowls + [[5.0, 5.0, 40.0, 40.0]], labels)  # a distinct fourth guess
    dup, fourth = (score_one("pixmo_count", r, centres, extra) for r in (duplicate, distinct))
    right = score_one("pixmo_count", det_answer(bowls, labels[:3]), centres, extra)
    assert dup["count"] == 0.0 and fourth["count"] == 0.0 and right["count"] == 1.0
    assert dup["score"] <= fourth["score"] < right["score"]
    assert dup["score"] == pytest.approx(1.75)  # was 2.75: the duplicate bought the count
    # ... as the benchmark sees them: both count 4 against 3 and are wrong
    counts = [count_from_response(r) for r in (duplicate, distinct, det_answer(bowls, labels[:3]))]
    assert counts == [4, 4, 3] and counting_accuracy(counts, [3, 3, 3])["accuracy"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------ (6) detection labels


def test_detection_wrong_labels_score_like_no_answer(shared_data):
    image = next(i for i in coco_images(shared_data) if i["id"] == 39769)  # cat ×2, remote ×2, couch, bed
    boxes = [o["bbox"] for o in image["objects"]]
    labels = [o["label"] for o in image["objects"]]
    swapped = ["dog" if lab != "dog" else "cat" for lab in labels]  # perfect boxes, every label wrong
    extra = {"image_size": image["size"]}
    objects = image["objects"]
    wrong = score_one("coco_detection", det_answer(boxes, swapped), objects, extra)
    empty = score_one("coco_detection", "[]", objects, extra)
    half = score_one("coco_detection", det_answer(boxes[:3], labels[:3]), objects, extra)
    assert wrong["score"] == pytest.approx(empty["score"]) == pytest.approx(0.0)  # was 3.0 of 4
    assert (wrong["recall"], wrong["missing"], wrong["classification"]) == (0.0, 1.0, 0.0)
    assert half["score"] > wrong["score"] + 1.0
    # COCO AP agrees: wrong labels are worth nothing, half the objects are worth something
    data = image["data"]
    ids = {c["name"]: c["id"] for c in data["categories"]}

    def ap(bxs, labs):
        results = [{"image_id": image["id"], "category_id": ids[lab], "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "score": 1.0} for b, lab in zip(bxs, labs, strict=True)]  # fmt: skip
        return coco_detection_metrics(data, results, image_ids=[image["id"]])["AP"]

    assert ap(boxes, swapped) == 0.0 and ap(boxes[:3], labels[:3]) > 0.3
    # the earlier class-agnostic matching, kept as an ablation, is what scored 3.0
    assert score_one("coco_detection", det_answer(boxes, swapped), objects, extra, class_aware="false")["score"] == 3.0


# ------------------------------------------------------------------ (8) coordinate frames


def qwen25_rows(shared_data: Path, **frame_fields) -> list[ScoreRow]:
    rows = []
    for image in coco_images(shared_data)[:4]:
        boxes = [o["bbox"] for o in image["objects"]]
        labels = [o["label"] for o in image["objects"]]
        answer = det_answer(boxes, labels, "qwen2_5_vl", image["size"], max_pixels=1003520)
        extra = {"image_size": image["size"], **frame_fields}
        rows.append(ScoreRow("coco_detection", answer, image["objects"], extra))
    return rows


def test_rows_are_scored_in_their_recorded_frame(shared_data):
    recorded = {"coord_frame": "qwen2_5_vl", "min_pixels": 3136, "max_pixels": 1003520}
    rows = qwen25_rows(shared_data, **recorded)
    assert all(v["score"] > 3.8 and v["recall"] == 1.0 for v in run(rows))  # no --set: the row's own frame
    assert all(v["score"] > 3.8 for v in run(rows, {"coord_frame": "qwen2_5_vl", "max_pixels": "1003520"}))
    legacy = qwen25_rows(shared_data)  # rows that record nothing keep the qwen2_vl default
    assert all(v["recall"] < 1.0 for v in run(legacy))
    # a smaller image as Qwen2.5-VL resizes it with other limits: its pixels differ, so the limits matter
    assert smart_resize(480, 640, max_pixels=200704) != smart_resize(480, 640, max_pixels=1003520)


@pytest.mark.parametrize(
    ("overrides", "field", "values"),
    [
        ({"coord_frame": "qwen2_vl"}, "extra_info.coord_frame", ("'qwen2_5_vl'", "coord_frame='qwen2_vl'")),
        ({"coord_frame": "absolute"}, "extra_info.coord_frame", ("'qwen2_5_vl'", "coord_frame='absolute'")),
        ({"max_pixels": "200704"}, "extra_info.max_pixels", ("max_pixels=1003520", "max_pixels=200704")),
    ],
)
def test_rows_contradicting_the_run_are_refused(shared_data, overrides, field, values):
    row = qwen25_rows(shared_data, coord_frame="qwen2_5_vl", max_pixels=1003520)[0]
    scorer = RewardScorer(overrides, workers=1)
    try:
        with pytest.raises(ValueError, match=re.escape(field)) as info:
            scorer.validate(row)
    finally:
        scorer.close()
    assert all(v in str(info.value) for v in values)


def test_recorded_frame_is_validated_and_qwen3_matches_qwen2(shared_data):
    with pytest.raises(ValueError, match=r"extra_info\.coord_frame"):
        get_task("refcoco").validate([1, 2, 3, 4], {"image_size": [640, 480], "coord_frame": "yolo"})
    with pytest.raises(ValueError, match=r"extra_info\.min_pixels"):
        get_task("pixmo_count").validate([], {"image_size": [640, 480], "min_pixels": -5})
    row = ScoreRow("refcoco", "[156, 208, 312, 416]", [100, 100, 200, 200],
                   {"image_size": [640, 480], "coord_frame": "qwen2_vl"})  # fmt: skip
    assert run([row], {"coord_frame": "qwen3_vl"})[0]["iou"] > 0.99  # the same conversion: no contradiction


def test_builders_record_the_frame_and_curriculum_uses_it(shared_data, tmp_path):
    coco = tmp_path / "coco.parquet"
    assert main(["data", "coco-detection", "--annotations", str(shared_data / "coco" / "instances.json"),
                 "--min-pixels", "3136", "--max-pixels", "1003520", "--limit", "3", "--output", str(coco)]) == 0  # fmt: skip
    rows = pq.read_table(coco).to_pylist()
    for row in rows:  # detection data is built for the paper's Qwen2.5-VL by default
        assert {k: row["extra_info"][k] for k in ("coord_frame", "min_pixels", "max_pixels")} == {
            "coord_frame": "qwen2_5_vl", "min_pixels": 3136, "max_pixels": 1003520}  # fmt: skip
    other = tmp_path / "coco_qwen2.parquet"
    assert main(["data", "coco-detection", "--annotations", str(shared_data / "coco" / "instances.json"),
                 "--coord-frame", "qwen2_vl", "--limit", "1", "--output", str(other)]) == 0  # fmt: skip
    extra = pq.read_table(other).to_pylist()[0]["extra_info"]
    assert extra["coord_frame"] == "qwen2_vl" and "max_pixels" not in extra
    # the curriculum's self-scoring: rollouts that carry only the prompt index and image size are scored in the
    # frame of their data row (Qwen2.5-VL pixels here), so a perfect answer is easy and an empty one hard
    rollouts = tmp_path / "rollouts.jsonl"
    lines = []
    for row in rows:
        extra = row["extra_info"]
        truth = json.loads(row["reward_model"]["ground_truth"]) if isinstance(
            row["reward_model"]["ground_truth"], str) else row["reward_model"]["ground_truth"]  # fmt: skip
        perfect = det_answer([o["bbox"] for o in truth], [o["label"] for o in truth], "qwen2_5_vl",
                             extra["image_size"], max_pixels=1003520)  # fmt: skip
        response = perfect if extra["index"] != 1 else "[]"
        lines.append({"data_source": "coco_detection", "response": response, "ground_truth": truth,
                      "extra_info": {"index": extra["index"], "image_size": extra["image_size"]}})  # fmt: skip
    rollouts.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    out = tmp_path / "curriculum.parquet"
    assert main(["data", "curriculum", "--data", str(coco), "--rollouts", str(rollouts), "--output", str(out)]) == 0
    ordered = pq.read_table(out).to_pylist()
    assert [r["extra_info"]["index"] for r in ordered][-1] == 1
    assert [r["extra_info"]["curriculum_score"] > 3.8 for r in ordered] == [True, True, False]
    # a contradicting --set is refused with the field named, before anything is written
    refused = tmp_path / "refused.parquet"
    assert main(["data", "curriculum", "--data", str(coco), "--rollouts", str(rollouts), "--output", str(refused),
                 "--set", "coord_frame=qwen2_vl"]) == 2  # fmt: skip
    assert not refused.exists()


def test_eval_score_uses_the_recorded_frame(shared_data, tmp_path, capsys):
    annotations = shared_data / "coco" / "instances.json"
    parquet = tmp_path / "coco.parquet"
    assert main(["data", "coco-detection", "--annotations", str(annotations), "--split", "val",
                 "--min-pixels", "3136", "--max-pixels", "1003520", "--output", str(parquet)]) == 0  # fmt: skip
    predictions = tmp_path / "predictions.jsonl"
    lines = []
    for i, row in enumerate(pq.read_table(parquet).to_pylist()):  # answers in Qwen2.5-VL's resized pixels (floats)
        truth = row["reward_model"]["ground_truth"]
        truth = json.loads(truth) if isinstance(truth, str) else truth
        coords = from_original(np.asarray([o["bbox"] for o in truth], dtype=float), "qwen2_5_vl",
                               row["extra_info"]["image_size"], max_pixels=1003520)  # fmt: skip
        answer = json.dumps([{"bbox_2d": c.tolist(), "label": o["label"]} for c, o in zip(coords, truth, strict=True)])
        lines.append(json.dumps({"id": str(i), "benchmark": "coco_detection", "response": answer}))
    predictions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = ["eval", "score", "--benchmark", "coco_detection", "--data", str(parquet), "--predictions",
            str(predictions), "--annotations", str(annotations), "--json"]  # fmt: skip
    capsys.readouterr()
    assert main(base) == 0  # no --set: every row in the frame it was built for
    assert json.loads(capsys.readouterr().out)["AP"] > 0.99
    assert main([*base, "--set", "coord_frame=qwen2_vl"]) == 2
    err = capsys.readouterr().err
    assert "extra_info.coord_frame" in err and "'qwen2_5_vl'" in err and "coord_frame='qwen2_vl'" in err
