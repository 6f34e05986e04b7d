"""Promises of the rule rewards that mutation testing (docs/mutation.md) found unguarded: defaults that the
launchers override explicitly (so they drift unseen), which block and which box is read, threshold edges, empty
images, and order-independence of the matching. Expected values are worked out by hand in each test."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import numpy as np
import pytest

from perception_r1.rewards import counting, detection, geo3k_visual, grounding, ocr
from perception_r1.rewards.boxes import split_answer
from perception_r1.rewards.format import format_reward
from perception_r1.rewards.math_answer import (
    accuracy_from_key,
    accuracy_key,
    answer_block,
    answer_candidate,
    extract_answer,
    last_boxed,
    verify_answer,
)
from perception_r1.rewards.ngram import ngram_penalty
from perception_r1.rewards.registry import build_settings, get_task, registered_tasks

REPO = Path(__file__).resolve().parents[1]
SIZE = {"image_size": [640, 480]}


def score(data_source: str, response: str, ground_truth, extra_info=SIZE, **overrides) -> dict:
    task = get_task(data_source)
    settings = build_settings(task.settings, overrides)
    task.validate(ground_truth, extra_info)
    components = task.rule_components(response, ground_truth, extra_info, settings)
    return {"score": task.combine(components, settings), **components}


# ------------------------------------------------------------------ defaults are the paper's (docs/fidelity.md)


def documented_deviations() -> dict[str, set[str]]:
    """``{task: {setting, ...}}`` from the "differs from the defaults in" column of docs/fidelity.md."""
    out = {}
    for line in (REPO / "docs" / "fidelity.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].strip("`") in registered_tasks():
            out[cells[0].strip("`")] = set() if cells[2] == "nothing" else set(re.findall(r"`([a-z_]+)`", cells[2]))
    return out


def test_defaults_are_the_paper_preset_except_the_documented_deviations():
    """``score`` without ``--set`` gives the paper's numbers (the launchers pass the paper's values explicitly, so
    a drifted default would only show up offline); the one deliberate difference per task is the documented one."""
    deviations = documented_deviations()
    assert set(deviations) == set(registered_tasks())
    for name, task in registered_tasks().items():
        defaults = task.settings()
        paper = build_settings(task.settings, {"preset": "paper"})
        differs = {f for f in task.settings.PRESETS["paper"] if getattr(defaults, f) != getattr(paper, f)}
        assert differs == deviations[name], name


def test_geo3k_launcher_passes_exactly_the_defaults():
    """The released geo3k launcher spells out the reward weights and n-gram settings: they are the defaults."""
    script = (REPO / "examples" / "run_qwen2_5_vl_7b_geo3k_visual.sh").read_text(encoding="utf-8")
    passed = dict(re.findall(r"\+\+reward\.reward_kwargs\.([a-z_]+)=(\S+)", script))
    assert {"ngram_size", "ngram_max_penalty", "format_weight", "accuracy_weight", "visual_weight"} <= set(passed)
    defaults = geo3k_visual.Geo3kVisualSettings()
    for key, value in passed.items():
        assert getattr(defaults, key) == type(getattr(defaults, key))(value), key


def test_ngram_penalty_defaults_are_the_task_defaults():
    """21 equal words: two 20-word windows, one unique, so (1 - 1/2) * -2.0 = -1.0 with the defaults (n = 20 would
    be 0 at n = 21, and -1.0 is half the -2.0 cap)."""
    s = geo3k_visual.Geo3kVisualSettings()
    loop = " ".join(["again"] * 21)
    assert ngram_penalty(loop) == ngram_penalty(loop, n=s.ngram_size, max_penalty=s.ngram_max_penalty) == -1.0
    assert ngram_penalty(" ".join(["again"] * 20)) == 0.0  # one window: nothing repeats yet
    row = score("geo3k_visual", loop, "2")
    assert row["ngram_penalty"] == -1.0 and row["score"] == -1.0


def test_ngram_penalty_edges():
    import math

    assert ngram_penalty("a a", n=1) == -1.0 and ngram_penalty("a b", n=1) == 0.0  # n = 1 is a real size
    assert ngram_penalty("a a a a", n=0) == 0.0 and ngram_penalty("a a a a", n=-3) == 0.0  # no such n-grams
    clean = ngram_penalty("a b c d", n=2)
    assert clean == 0.0 and math.copysign(1.0, clean) == 1.0  # never -0.0 (it would print as "-0.0")
    # lower-cased words: "Straße" and "STRASSE" stay different words (upper-casing would merge them)
    assert ngram_penalty("Straße STRASSE", n=1) == 0.0 and ngram_penalty("Again AGAIN", n=1) == -1.0


def test_hard_limit_leaves_math_verifys_own_timeouts_room():
    """A check is two parses and a verify, each bounded by math-verify's own timeout: the hard kill (a crash-like
    0) must come only after all three could have ended cleanly."""
    s = geo3k_visual.Geo3kVisualSettings()
    assert s.math_hard_timeout_s >= 3 * s.math_timeout_s
    assert get_task("geo3k_visual").isolated.timeout_s(s) == s.math_hard_timeout_s


# ------------------------------------------------------------------ geo3k: which answer is read


def test_the_last_of_two_answer_blocks_is_the_answer():
    response = "<answer>\n\\boxed{1}\n</answer> on second thought <answer>\n\\boxed{2}\n</answer>"
    assert answer_block(response) == "\\boxed{2}"
    assert extract_answer(response) == "2"
    assert answer_block("<answer>\n7\n</answer> and <answer>\n8") == "7"  # an unclosed one is no block
    assert answer_block("no open tag </answer>") is None


def test_an_unbalanced_last_box_falls_back_to_the_previous_one():
    assert last_boxed(r"first \boxed{1} then \boxed{2") == "1"
    assert last_boxed(r"\boxed{\frac{1}{2}} then \boxed{\frac{3}{4}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{2") is None
    assert last_boxed(r"\boxed{1} \boxed{2} \boxed{3") == "2"  # the nearest balanced one, not the first
    assert extract_answer(r"so \boxed{3} and finally \boxed{4") == "3"


def test_boxed_is_preferred_to_fbox_and_fbox_is_read_without_boxed():
    assert last_boxed(r"\fbox{1} \boxed{2} \fbox{3}") == "2"
    assert last_boxed(r"\fbox{1} or \fbox{3}") == "3"
    assert last_boxed(r"\fbox{3}", ("\\boxed{",)) is None


def test_answer_candidate_kinds():
    assert answer_candidate("<answer>\nThe answer is 5\n</answer>") == ("block", "The answer is 5")
    assert answer_candidate("<answer>\n\\boxed{ }\n</answer>") == ("block", "\\boxed{ }")  # an empty box is no box
    assert answer_candidate("<answer>\n\n</answer>") is None
    # the last box of the block, read as one expression ("boxed"), also when a box precedes the block
    assert answer_candidate("\\boxed{1} <answer>\\boxed{ 3 } or \\boxed{4}</answer>") == ("boxed", "4")
    # the last block: one before it does not count, an unclosed one after it does not either
    assert answer_candidate("<answer>\\boxed{1}</answer> <answer>\\boxed{2}</answer> <answer>x") == ("boxed", "2")
    assert answer_candidate(r"reasoning \boxed{ 7 }") == ("boxed", "7")
    assert answer_candidate(r"reasoning \boxed{7}", fallback=False) is None
    assert answer_candidate(r"reasoning \boxed{ }") is None
    assert answer_candidate(None) is None  # type: ignore[arg-type]


def test_accuracy_key_follows_the_fallback_setting():
    on = geo3k_visual.Geo3kVisualSettings()
    off = geo3k_visual.Geo3kVisualSettings(answer_fallback=False)
    assert accuracy_key(r"so \boxed{4}", 4, on) == ("4", "4", "boxed")
    assert accuracy_key(r"so \boxed{4}", 4, off) is None


def test_math_verify_reads_the_ground_truth_as_gold():
    """math-verify is not symmetric: a gold inequality accepts the interval, a gold interval does not accept the
    inequality. The ground truth must reach it as the gold."""
    assert verify_answer("1 < x < 2", "(1,2)", 5.0) == 1.0
    assert verify_answer("(1,2)", "1 < x < 2", 5.0) == 0.0
    s = geo3k_visual.Geo3kVisualSettings()
    assert accuracy_from_key(("1 < x < 2", "(1,2)", "boxed"), s) == 1.0
    assert accuracy_from_key(("(1,2)", "1 < x < 2", "boxed"), s) == 0.0


def test_free_text_is_read_only_from_a_block_without_a_box():
    assert verify_answer("5", "The answer is 5", 5.0, kind="block") == 1.0
    assert verify_answer("5", "The answer is 5", 5.0) == 0.0  # boxed reading: one expression, not a sentence
    s = geo3k_visual.Geo3kVisualSettings()
    key = accuracy_key("<think>\nso\n</think>\n<answer>\nThe answer is 5\n</answer>", 5, s)
    assert key == ("5", "The answer is 5", "block") and accuracy_from_key(key, s) == 1.0  # the kind reaches it
    assert accuracy_from_key(("5", "The answer is 5", "boxed"), s) == 0.0
    # nothing math-verify can parse on either side: the texts are compared without spaces and a final full stop
    assert verify_answer("$$", "$ $.", 5.0) == 1.0 and verify_answer("$$", "$$x", 5.0) == 0.0


# ------------------------------------------------------------------ templates


def test_interleaved_think_and_answer_tags_fail_the_template():
    interleaved = "<think>\nx = 2\n<answer>\n</think>\n\\boxed{2}\n</answer>"
    assert format_reward(interleaved) == 0.0
    assert format_reward(interleaved, rule="paper") == 0.0
    assert format_reward("<think>\nx = 2\n</think>\n<answer>\n\\boxed{2}\n</answer>") == 1.0
    answer, ok = split_answer("<think>\na\n<answer>\n</think>\n[1, 2, 3, 4]\n</answer>", thinking=True)
    assert not ok
    answer, ok = split_answer("<answer>\n[1, 2, 3, 4]\n</answer>\n<think>\na\n</think>", thinking=True)
    assert not ok and answer == "[1, 2, 3, 4]"
    answer, ok = split_answer("<think>\na\n</think> junk <answer>\n[1, 2, 3, 4]\n</answer>", thinking=True)
    assert not ok  # text between the blocks
    answer, ok = split_answer(" <think>\na\n</think>\n<answer>\n[1, 2, 3, 4]\n</answer>\n", thinking=True)
    assert ok and answer == "[1, 2, 3, 4]"


@pytest.mark.parametrize("rule", ["strict", "paper"])
@pytest.mark.parametrize("garbage", [None, 2, b"<think>\na\n</think>\n<answer>\n\\boxed{2}\n</answer>"])
def test_a_response_that_is_not_text_earns_no_format_credit(garbage, rule):
    # a broken rollout can hand the reward None, a number or bytes: never format credit, never an exception
    assert format_reward(garbage, rule=rule) == 0.0
    assert format_reward(garbage, template="perception", rule=rule) == 0.0


def test_perception_template_needs_every_block_in_order():
    good = "<perception>\nAB = 2\n</perception>\n<think>\nso x = 2\n</think>\n<answer>\n\\boxed{2}\n</answer>"
    assert format_reward(good, template="perception") == 1.0
    assert format_reward(good, template="perception", rule="paper") == 1.0
    assert format_reward(good) == 0.0  # a perception block is not the think template
    empty = "<perception>\n \n</perception>\n<think>\nso x = 2\n</think>\n<answer>\n\\boxed{2}\n</answer>"
    assert format_reward(empty, template="perception") == 0.0
    with pytest.raises(ValueError, match="template"):
        format_reward(good, template="nope")
    with pytest.raises(ValueError, match="format_rule"):
        format_reward(good, rule="nope")


# ------------------------------------------------------------------ OCR


def test_ocr_is_case_sensitive_by_default():
    """Page OCR is scored on the text as printed: "hello world" for "Hello World" is 2 edits in 11 characters."""
    assert ocr.edit_accuracy("hello world", "Hello World") == pytest.approx(1 - 2 / 11)
    assert ocr.edit_accuracy("hello world", "Hello World", case_sensitive=False) == 1.0
    row = score("pageocr", "hello world", "Hello World")
    assert row["accuracy"] == pytest.approx(1 - 2 / 11) and row["score"] == pytest.approx(1 + 1 - 2 / 11)
    assert score("pageocr", "hello world", "Hello World", case_sensitive="false")["accuracy"] == 1.0


# ------------------------------------------------------------------ detection


def boxes_answer(boxes, labels) -> str:
    return json.dumps([{"bbox_2d": b, "label": lab} for b, lab in zip(boxes, labels, strict=True)])


def test_iou_exactly_at_the_threshold_is_a_true_positive():
    """[0,0,10,5] vs [0,0,10,10]: 50 / 100 = 0.5 exactly, which is a hit at match_iou = 0.5 (AP counts IoU >= t)."""
    pred, gt = np.array([[0, 0, 10, 5]], float), np.array([[0, 0, 10, 10]], float)
    paper = detection.detection_components(pred, ["cat"], gt, ["cat"], match_iou=0.5, ap_aligned=False)
    assert paper == {"location": 0.5, "classification": 1.0, "recall": 1.0, "missing": 0.0}
    aligned = detection.detection_components(pred, ["cat"], gt, ["cat"], match_iou=0.5)
    # reaches 1 of the 10 AP thresholds 0.5 … 0.95: a tenth of a true positive, and its IoU counts as location
    assert aligned["recall"] == pytest.approx(0.1) and aligned["missing"] == pytest.approx(0.9)
    assert aligned["location"] == 0.5 and aligned["classification"] == pytest.approx(0.1)
    below = detection.detection_components(pred, ["cat"], gt, ["cat"], match_iou=0.51)
    assert below == {"location": 0.0, "classification": 0.0, "recall": 0.0, "missing": 1.0}


def test_thresholds_are_cocos():
    assert detection._thresholds(0.5).tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert detection._thresholds(0.75).tolist() == [0.75, 0.8, 0.85, 0.9, 0.95]
    assert detection._thresholds(0.99).tolist() == [0.99]


def test_garbage_on_an_image_without_objects_is_not_a_correct_no_objects():
    for data_source, perfect in (("coco_detection", 4.0), ("pixmo_count", 3.0)):
        assert score(data_source, "[]", [], coord_frame="absolute")["score"] == perfect
        garbage = score(data_source, "I cannot see well.", [], coord_frame="absolute")
        assert garbage["score"] == 0.0, data_source
    garbage = score("coco_detection", "I cannot see well.", [], coord_frame="absolute")
    assert garbage["location"] == garbage["classification"] == garbage["recall"] == garbage["missing"] == 0.0
    counted = score("pixmo_count", "I cannot see well.", [], coord_frame="absolute")
    assert counted["location"] == counted["count"] == counted["format"] == 0.0


def test_equal_total_iou_prefers_more_true_positives_in_any_order():
    """P0-G0 = 0.5 (a hit) with P1-G1 = 0, or P0-G1 = 0.25 and P1-G0 = 0.25: both total 0.5. The documented rule
    picks the matching with more hits, whatever order the predictions and objects come in: recall 2·1/4."""
    preds = [[0, 0, 10, 5], [5, 5, 10, 10]]
    gts = [[0, 0, 10, 10], [0, 0, 5, 2.5]]
    expected = {"location": 0.25, "classification": 0.5, "recall": 0.5, "missing": 0.5}
    for p in (preds, preds[::-1]):
        for g in (gts, gts[::-1]):
            parts = detection.detection_components(
                np.array(p, float), ["cat", "cat"], np.array(g, float), ["cat", "cat"], ap_aligned=False
            )
            assert parts == pytest.approx(expected), (p, g)


def test_matching_maximises_iou_before_counting_hits():
    """The tie-breaker only breaks ties: P0-G0 0.3 + P1-G1 0.4 (no hit) beats P0-G1 0.10 + P1-G0 0.52 (one hit)."""
    preds = np.array([[12, 10, 19, 14], [11, 12, 16, 16]], float)
    gts = np.array([[10, 12, 18, 15], [9, 12, 15, 18]], float)
    parts = detection.detection_components(preds, ["a", "a"], gts, ["a", "a"], ap_aligned=False)
    assert parts == pytest.approx({"location": 0.35, "classification": 0.0, "recall": 0.0, "missing": 1.0})


def test_class_agnostic_matching_uses_labels_only_to_break_ties():
    pred = np.array([[0, 0, 10, 10]], float)
    # equal IoU 0.5 with a dog and a cat: the cat prediction pairs with the cat, in either order of the objects
    gts = [([0, 0, 10, 5], "dog"), ([0, 5, 10, 10], "cat")]
    for order in (gts, gts[::-1]):
        parts = detection.detection_components(
            pred, ["cat"], np.array([b for b, _ in order], float), [lab for _, lab in order], class_aware=False,
            ap_aligned=False,
        )
        assert parts["classification"] == 0.5 and parts["recall"] == pytest.approx(2 / 3)
    # a better box with the wrong label wins over a worse one with the right label (IoU first)
    better = detection.detection_components(
        pred, ["cat"], np.array([[0, 0, 10, 9], [0, 5, 10, 10]], float), ["dog", "cat"], class_aware=False,
        ap_aligned=False,
    )
    assert better["location"] == pytest.approx(0.9 / 2) and better["classification"] == 0.0
    # class-aware (the default): the dog box is not a candidate at all
    aware = detection.detection_components(
        pred, ["cat"], np.array([[0, 0, 10, 9], [0, 5, 10, 10]], float), ["dog", "cat"], ap_aligned=False
    )
    assert aware["location"] == pytest.approx(0.5 / 2) and aware["classification"] == 0.5


def test_counting_and_grounding_defaults():
    """Counting: a point 32 px off on a 640×480 image (diagonal 800, scale 10 % = 80 px) scores 1 - 32/80 = 0.6.
    Grounding: the IoU is squared by default (0.5 -> 0.25)."""
    near = score("pixmo_count", json.dumps([{"point_2d": [132, 100]}]), [[100, 100]], coord_frame="absolute")
    assert near["location"] == pytest.approx(0.6) and near["count"] == 1.0 and near["score"] == pytest.approx(2.6)
    half = score("refcoco", "[0, 0, 10, 5]", [0, 0, 10, 10], coord_frame="absolute")
    assert half["iou"] == 0.5 and half["score"] == pytest.approx(1.25)
    plain = score("refcoco", "[0, 0, 10, 5]", [0, 0, 10, 10], coord_frame="absolute", iou_squared="false")
    assert plain["score"] == pytest.approx(1.5)


def test_task_modules_register_their_data_sources():
    assert {t.DATA_SOURCE for t in (counting, detection, geo3k_visual, grounding, ocr)} <= set(registered_tasks())


def test_extract_answer_honours_no_fallback():
    assert extract_answer(r"reasoning \boxed{7}") == "7"
    assert extract_answer(r"reasoning \boxed{7}", fallback=False) is None
    assert extract_answer("<answer>\n\\boxed{7}\n</answer>", fallback=False) == "7"


def test_format_boxes_json_is_the_qwen25_answer_the_parser_reads():
    from perception_r1.rewards.boxes import format_boxes_json, parse_boxes

    text = format_boxes_json(np.array([[10.4, 20.6, 30, 40], [1, 2, 3, 4]]), ["cat", None])
    assert text == '```json\n[{"bbox_2d": [10, 21, 30, 40], "label": "cat"}, {"bbox_2d": [1, 2, 3, 4]}]\n```'
    parsed = parse_boxes(text)
    assert parsed.coords.tolist() == [[10, 21, 30, 40], [1, 2, 3, 4]] and parsed.labels == ["cat", None]
    assert format_boxes_json([[1.234, 2, 3, 4]], decimals=2) == '```json\n[{"bbox_2d": [1.23, 2.0, 3.0, 4.0]}]\n```'
    assert format_boxes_json([[1.234, 2, 3, 4]], decimals=None) == '```json\n[{"bbox_2d": [1.234, 2.0, 3.0, 4.0]}]\n```'
    assert format_boxes_json(np.array([[1, 2, 3, 4]], dtype=np.int64), decimals=None).count("1.0") == 1
    assert format_boxes_json([]) == "```json\n[]\n```"


def test_broken_json_objects_are_read_field_by_field():
    """Not JSON (a stray word before the brace), so each field is read with the regexes: quoted numbers count."""
    from perception_r1.rewards.boxes import parse_boxes, parse_points

    parsed = parse_boxes('{"bbox_2d": ["10", "20", \'30\', 40], "label": "cat" oops}')
    assert parsed.coords.tolist() == [[10, 20, 30, 40]] and parsed.labels == ["cat"] and parsed.clean
    empty = parse_boxes('{"bbox_2d": [], "label": "cat" oops}')
    assert len(empty) == 0 and empty.dropped == 1 and empty.syntax == "json"
    points = parse_points('{"point_2d": [" 5 ", "6"] oops}')
    assert points.coords.tolist() == [[5, 6]]


# ------------------------------------------------------------------ bad data: the error names the field and the expectation


@pytest.mark.parametrize("value", [True, 1.5, "3136", 0, -3])
def test_recorded_pixel_limits_must_be_positive_integers(value):
    from perception_r1.rewards.boxes import recorded_frame

    with pytest.raises(ValueError, match=r"^extra_info\.max_pixels: expected a positive integer pixel count, got "):
        recorded_frame({"max_pixels": value})


def test_recorded_frame_reads_what_the_row_records():
    from perception_r1.rewards.boxes import recorded_frame

    assert recorded_frame({}) == (None, None, None)
    assert recorded_frame({"coord_frame": "qwen2_5_vl", "min_pixels": 3136.0, "max_pixels": np.int64(9)}) == (
        "qwen2_5_vl", 3136, 9,
    )
    assert recorded_frame(None) == (None, None, None)
    with pytest.raises(ValueError, match=r"^extra_info\.coord_frame: expected one of \['qwen2_vl', .*got 'qwen9'"):
        recorded_frame({"coord_frame": "qwen9"})


def test_resolve_frame_precedence_and_contradictions():
    from perception_r1.rewards.boxes import (
        DEFAULT_MAX_PIXELS,
        DEFAULT_MIN_PIXELS,
        PerceptionSettings,
        resolve_frame,
        settings_for_row,
    )

    default = PerceptionSettings()
    assert tuple(vars(resolve_frame(default, {})).values()) == ("qwen2_vl", DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    row = {"coord_frame": "qwen2_5_vl", "min_pixels": 100, "max_pixels": 200}
    assert tuple(vars(resolve_frame(default, row)).values()) == ("qwen2_5_vl", 100, 200)
    explicit = PerceptionSettings(coord_frame="qwen3_vl", max_pixels=500)
    assert resolve_frame(explicit, {"coord_frame": "qwen2_vl"}).name == "qwen3_vl"  # same conversion: no conflict
    assert resolve_frame(PerceptionSettings(coord_frame="qwen2_vl"), {"coord_frame": "qwen3_vl"}).name == "qwen2_vl"
    assert resolve_frame(explicit, {"max_pixels": 900}).max_pixels == 500  # the run's value wins outside qwen2_5_vl
    with pytest.raises(ValueError, match=r"^extra_info\.coord_frame: the row was built for 'qwen2_5_vl' but the run "
                       r"sets coord_frame='qwen3_vl' \(rebuild the data with --coord-frame, or drop the setting to "
                       r"score each row in its recorded frame\)$"):  # fmt: skip
        resolve_frame(explicit, row)
    with pytest.raises(ValueError, match=r"^extra_info\.max_pixels: the row was built for max_pixels=200 but the run "
                       r"sets max_pixels=300 \(qwen2_5_vl coordinates are pixels of the resized image, so both must "
                       r"agree\)$"):  # fmt: skip
        resolve_frame(PerceptionSettings(coord_frame="qwen2_5_vl", max_pixels=300), row)
    with pytest.raises(ValueError, match=r"^extra_info\.min_pixels: the row was built for min_pixels=100"):
        resolve_frame(PerceptionSettings(min_pixels=50), row)
    assert resolve_frame(default, {"coord_frame": "qwen2_5_vl", "min_pixels": 1}).min_pixels == 1  # 1 is positive
    filled = settings_for_row(default, row)
    assert (filled.coord_frame, filled.min_pixels, filled.max_pixels) == ("qwen2_5_vl", 100, 200)


@pytest.mark.parametrize(
    "size, message",
    [
        (None, "extra_info.image_size: missing; expected [width, height] of the original image in pixels"),
        (["a", 2], "extra_info.image_size: expected [width, height] numbers, got ['a', 2]"),
        (5, "extra_info.image_size: expected [width, height] numbers, got 5"),
        ([640], "extra_info.image_size: expected [width, height] with positive finite numbers, got [640]"),
        ([640, 0], "extra_info.image_size: expected [width, height] with positive finite numbers, got [640, 0]"),
        ([640, float("inf")], "extra_info.image_size: expected [width, height] with positive finite numbers"),
        ([201, 1], "extra_info.image_size: aspect ratio above 200 (the Qwen processors refuse such images)"),
    ],
)
def test_image_size_errors(size, message):
    from perception_r1.rewards.boxes import read_image_size

    with pytest.raises(ValueError) as info:
        read_image_size({} if size is None else {"image_size": size})
    assert str(info.value).startswith(message)


def test_image_size_accepts_json_text_and_ratio_200():
    from perception_r1.rewards.boxes import read_image_size

    assert read_image_size({"image_size": "[640, 480]"}) == (640.0, 480.0)
    assert read_image_size({"image_size": [200, 1]}) == (200.0, 1.0)


def test_ground_truth_arrays():
    from perception_r1.rewards.boxes import gt_array

    assert gt_array([1, 2, 3, 4], 4, "gt").tolist() == [1, 2, 3, 4]
    assert gt_array([5, 1], 2, "p", boxes=False).tolist() == [5, 1]
    assert gt_array([3, 4, 1, 2], 4, "p", boxes=False).tolist() == [3, 4, 1, 2]  # points: no order
    with pytest.raises(ValueError, match=r"^gt: expected 4 numbers, got 7$"):
        gt_array(7, 4, "gt")
    with pytest.raises(ValueError, match=r"^gt: expected 4 finite numbers, got \[1, 2, 3\]$"):
        gt_array([1, 2, 3], 4, "gt")
    with pytest.raises(ValueError, match=r"^gt: expected 4 finite numbers"):
        gt_array([1, 2, 3, float("nan")], 4, "gt")
    with pytest.raises(ValueError, match=r"^gt: expected \[x1, y1, x2, y2\] with x1 < x2 and y1 < y2, got \[3\.0"):
        gt_array([3, 2, 3, 4], 4, "gt")
    with pytest.raises(ValueError, match=r"x1 < x2 and y1 < y2"):
        gt_array([1, 4, 3, 4], 4, "gt")


def test_smart_resize_limits_and_errors():
    from perception_r1.rewards.boxes import smart_resize

    assert smart_resize(480, 640) == (476, 644)  # rounded to multiples of 28
    assert smart_resize(480, 640, max_pixels=100_000) == (252, 364)  # scaled down under the cap
    assert smart_resize(20, 30, min_pixels=3136) == (56, 84)  # scaled up over the floor
    assert smart_resize(28, 5600) == (28, 5600)  # ratio 200 is allowed
    with pytest.raises(ValueError, match="^image size must be positive, got height=0, width=5$"):
        smart_resize(0, 5)
    with pytest.raises(ValueError, match="^image size must be positive, got height=5, width=0$"):
        smart_resize(5, 0)
    with pytest.raises(ValueError, match=r"^absolute aspect ratio must be smaller than 200, got 250\.0$"):
        smart_resize(2, 500)  # the ratio, not the pixel count (1000)
    with pytest.raises(ValueError, match=r"got 200\.5$"):
        smart_resize(2, 401)  # just past 200


def test_frames_convert_to_original_pixels():
    from perception_r1.rewards.boxes import frame_scale, from_original, to_original

    assert frame_scale("qwen2_vl", (640, 480)) == (0.64, 0.48) == frame_scale("qwen3_vl", (640, 480))
    assert frame_scale("absolute", (640, 480)) == (1.0, 1.0)
    assert frame_scale("qwen2_5_vl", (640, 480)) == pytest.approx((640 / 644, 480 / 476))
    with pytest.raises(ValueError, match=r"^coord_frame: expected one of \['qwen2_vl'.*got 'pixels'"):
        frame_scale("pixels", (640, 480))
    box = np.array([[100.0, 200.0, 300.0, 400.0]])
    assert to_original(box, "qwen2_vl", (640, 480)).tolist() == [[64.0, 96.0, 192.0, 192.0]]
    assert from_original(to_original(box, "qwen2_vl", (640, 480)), "qwen2_vl", (640, 480)) == pytest.approx(box)
    assert to_original(np.array([[500.0, 500.0]]), "qwen2_vl", (640, 480)).tolist() == [[320.0, 240.0]]
    assert to_original(np.zeros((0, 2)), "qwen2_vl", (640, 480)).shape == (0, 2)


def test_geometry():
    from perception_r1.rewards.boxes import box_area, box_iou, pairwise_iou

    assert box_area(np.array([[0, 0, 2, 3], [5, 5, 4, 9]])).tolist() == [6.0, 0.0]
    assert box_area(np.array([[0, 0, 10, 0], [0, 0, 10, 0.5], [0, 0, 10, -2]])).tolist() == [0.0, 5.0, 0.0]
    a, b = np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]])
    assert pairwise_iou(a, b).tolist() == [[50 / 150, 0.0]]
    assert pairwise_iou(a, np.zeros((0, 4))).shape == (1, 0)
    for empty in (pairwise_iou(np.zeros((0, 4)), b), pairwise_iou([], [])):
        assert empty.size == 0 and empty.dtype == np.float64 and empty.shape[0] == 0
    assert float(box_iou(a[0], b[0])) == pytest.approx(1 / 3) and box_iou(a[0], b[0]).shape == ()
    assert box_iou(np.vstack([a, a]), b).tolist() == pytest.approx([1 / 3, 0.0])
    assert pairwise_iou(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]])).tolist() == [[0.0]]  # empty union


# ------------------------------------------------------------------ settings (--set key=value, reward_kwargs)


def test_set_options_are_parsed_and_coerced_to_the_field_types():
    from perception_r1.rewards.registry import parse_set_options

    assert parse_set_options(None) == {}
    assert parse_set_options([" match_iou = 0.75 ", "judge_prompt=strict", "x=a=b"]) == {
        "match_iou": "0.75", "judge_prompt": "strict", "x": "a=b",
    }
    for bad in ("match_iou", "=1", " =1"):
        with pytest.raises(ValueError, match=r"^--set expects key=value, got "):
            parse_set_options([bad])
    s = build_settings(detection.DetectionSettings, {"match_iou": "0.75", "class_aware": "off", "max_predictions": "7"})
    assert (s.match_iou, s.class_aware, s.max_predictions) == (0.75, False, 7)
    for text, value in (("1", True), ("TRUE", True), ("yes", True), ("on", True), ("0", False), ("No", False)):
        assert build_settings(detection.DetectionSettings, {"ap_aligned": text}).ap_aligned is value
    assert build_settings(detection.DetectionSettings, {"ap_aligned": False}).ap_aligned is False
    frame = build_settings(detection.DetectionSettings, {"coord_frame": "absolute", "min_pixels": "None"})
    assert frame.coord_frame == "absolute" and frame.min_pixels is None
    assert build_settings(detection.DetectionSettings, {"max_pixels": "null"}).max_pixels is None
    assert build_settings(detection.DetectionSettings, {"max_pixels": "1000"}).max_pixels == 1000
    assert build_settings(detection.DetectionSettings, {"unrelated": "1"}) == detection.DetectionSettings()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ap_aligned": "maybe"}, "setting 'ap_aligned': expected a boolean, got 'maybe'"),
        ({"match_iou": "high"}, "setting 'match_iou': expected float, got 'high'"),
        ({"max_predictions": "1.5"}, "setting 'max_predictions': expected int, got '1.5'"),
        ({"coord_frame": "pixels"}, "setting 'coord_frame': expected one of ['qwen2_vl', 'qwen2_5_vl', 'qwen3_vl', "
                                    "'absolute'], got 'pixels'"),
        ({"preset": "papr"}, "setting 'preset': unknown preset 'papr'; known presets: ['paper']"),
    ],
)
def test_bad_settings_name_the_setting(overrides, message):
    with pytest.raises(ValueError) as info:
        build_settings(detection.DetectionSettings, overrides)
    assert str(info.value) == message


def test_unknown_setting_keys_are_refused_with_the_known_ones():
    from perception_r1.rewards.registry import check_setting_keys, known_setting_keys

    check_setting_keys({"match_iou": "0.6", "visual_weight": "1", "preset": "paper"})
    assert {"preset", "match_iou", "ngram_size", "case_sensitive"} <= known_setting_keys()
    with pytest.raises(ValueError, match=r"^unknown setting 'match_iuo'; known settings: \["):
        check_setting_keys({"match_iuo": "0.6"})
    with pytest.raises(ValueError, match="unknown preset"):
        check_setting_keys({"preset": "papr"})


def test_presets_fill_in_under_explicit_keys():
    from perception_r1.rewards.registry import apply_preset, known_presets

    assert known_presets() == ["paper"]
    paper = build_settings(geo3k_visual.Geo3kVisualSettings, {"preset": "paper", "visual_weight": "0.5"})
    assert paper.format_rule == "paper" and paper.visual_weight == 0.5
    for off in (None, "", " none ", "Default"):
        assert apply_preset(geo3k_visual.Geo3kVisualSettings, {"preset": off, "a": 1}) == {"a": 1}
    assert build_settings(detection.DetectionSettings, {"preset": " paper "}).ap_aligned is False


def test_registering_a_second_task_under_a_taken_name_is_refused():
    from perception_r1.rewards.registry import register_task

    task = get_task("pageocr")
    assert register_task(task) is task  # the same task again is fine (re-import)
    with pytest.raises(ValueError, match=r"^data_source 'pageocr' is already registered$"):
        register_task(dataclasses.replace(task))
    with pytest.raises(KeyError, match=r"unknown data_source 'nope'; known: \['coco_detection', "):
        get_task("nope")


def test_validate_row_checks_the_frame_only_with_settings():
    from perception_r1.rewards.registry import validate_row

    task = get_task("refcoco")
    row = {"image_size": [640, 480], "coord_frame": "qwen2_5_vl"}
    validate_row(task, [1, 2, 3, 4], row)
    with pytest.raises(ValueError, match="coord_frame"):
        validate_row(task, [1, 2, 3, 4], row, grounding.GroundingSettings(coord_frame="qwen2_vl"))
    with pytest.raises(ValueError, match="ground_truth"):
        validate_row(task, [3, 2, 1, 4], row)


# ------------------------------------------------------------------ the one box parser


def parsed(text: str, **kwargs) -> tuple:
    from perception_r1.rewards.boxes import parse_boxes

    p = parse_boxes(text, **kwargs)
    return p.coords.tolist(), p.labels, p.dropped, p.over_cap, p.syntax


def test_special_token_boxes_keep_the_last_label_and_count_bad_boxes():
    two = "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|> and " \
          "<|box_start|>(5,6),(7,8)<|box_end|>"  # fmt: skip
    assert parsed(two) == ([[1, 2, 3, 4], [5, 6, 7, 8]], ["the cat", "the cat"], 0, 0, "special_tokens")
    bad = "<|box_start|>(1,2),(3,4)<|box_end|><|box_start|>(5,6),(1,2)<|box_end|><|box_start|>junk<|box_end|>"
    assert parsed(bad) == ([[1, 2, 3, 4]], [None], 2, 0, "special_tokens")


def test_tuple_boxes_take_the_label_written_before_them():
    text = "cat (1,2),(3,4) dog: (5,6),(7,8) (9,9),(1,1)"
    assert parsed(text) == ([[1, 2, 3, 4], [5, 6, 7, 8]], ["cat", "dog"], 1, 0, "tuples")
    assert parsed("(1,2),(a,4)") == ([], [], 1, 0, "tuples")


def test_lists_caps_and_empty_answers():
    assert parsed("[1,2,3,4] [5,6,7,8]", max_items=1) == ([[1, 2, 3, 4]], [None], 0, 1, "list")
    assert parsed("[1,2,3,4]", max_items=0) == ([], [], 0, 1, "list")
    assert parsed("[ 1, 2, 3, 4.5e1 ]") == ([[1, 2, 3, 45]], [None], 0, 0, "list")
    assert parsed("[]") == parsed("```json\n[]\n```") == ([], [], 0, 0, "json_empty")
    assert parsed("") == parsed("no boxes here") == ([], [], 0, 0, None)


def test_json_keys_labels_and_bad_values():
    text = '{"box": [1,2,3,4], "name": "  Cat. "} {"bbox": [1,2,3,4], "category": 7}'
    assert parsed(text) == ([[1, 2, 3, 4], [1, 2, 3, 4]], ["Cat", "7"], 0, 0, "json")
    assert parsed('{"label": "cat"}') == ([], [], 0, 0, None)  # an object without a box is not a box answer
    assert parsed('{"bbox_2d": [1,2,3,"x"]}') == ([], [], 1, 0, "json")
    assert parsed('{"bbox_2d": [1,2,3,true]}') == ([], [], 1, 0, "json")  # a bool is not a coordinate
    assert parsed('{"bbox_2d": [1,2,3,4], "label": "<|im_end|>dog"}')[1] == ["dog"]
    assert parsed('{"bbox_2d": [1,2,3,4], "label": ["x"]}')[1] == [None]


def test_points_syntaxes():
    from perception_r1.rewards.boxes import parse_points

    p = parse_points('[{"point_2d": [5, 6]}, {"point": [7, "8"]}, {"point_2d": [1]}]')
    assert (p.coords.tolist(), p.dropped, p.syntax) == ([[5, 6], [7, 8]], 1, "json")
    p = parse_points("[1, 2] [3, 4]")
    assert (p.coords.tolist(), p.syntax) == ([[1, 2], [3, 4]], "list")
    p = parse_points("[0,0,10,20] [4,4,2,2]")  # box centres; the reversed box is dropped
    assert (p.coords.tolist(), p.dropped, p.syntax) == ([[5, 10]], 1, "list")
    assert parse_points("[1,2,3,4]", box_centres=False).syntax is None
    assert parse_points("[]").syntax == "json_empty" and parse_points("").syntax is None
    capped = parse_points("[1, 2] [3, 4] [5, 6]", max_items=2)
    assert capped.coords.tolist() == [[1, 2], [3, 4]] and capped.over_cap == 1


def test_numbers_and_labels():
    from perception_r1.rewards.boxes import _clean_label, _number

    assert [_number(v) for v in (True, "1e3", " 7 ", float("nan"), "inf", None, 3, "x")] == [
        None, 1000.0, 7.0, None, None, None, 3.0, None,
    ]
    assert [_clean_label(v) for v in (" **cat**: ", "<|box_end|>", None, "a   b")] == ["cat", None, None, "a b"]


def test_an_unusable_image_size_drops_every_item():
    from perception_r1.rewards.boxes import PerceptionSettings, read_prediction

    parsed_, ok = read_prediction("[1,2,3,4] [5,6,7,8]", PerceptionSettings(coord_frame="qwen2_5_vl"), (1, 300))
    assert len(parsed_) == 0 and parsed_.dropped == 2 and parsed_.syntax == "list" and ok
    assert parsed_.coords.shape == (0, 4)
    # a malformed item already dropped is counted with the valid ones the frame could not place
    parsed_, _ = read_prediction("[1,2,3,4] [9,6,7,8]", PerceptionSettings(coord_frame="qwen2_5_vl"), (1, 300))
    assert len(parsed_) == 0 and parsed_.dropped == 2
    unplaced, _ = read_prediction("[1,2]", PerceptionSettings(coord_frame="qwen2_5_vl"), (1, 300), points=True)
    assert unplaced.coords.shape == (0, 2) and unplaced.dropped == 1
    points, _ = read_prediction("[1,2]", PerceptionSettings(coord_frame="absolute"), (10, 10), points=True)
    assert points.coords.tolist() == [[1, 2]]


def test_predictions_are_placed_with_the_runs_pixel_limits():
    from perception_r1.rewards.boxes import PerceptionSettings, from_original, read_prediction

    limits = {"min_pixels": 3136, "max_pixels": 200704}  # 2550 x 3300 is resized far below the default cap
    model = from_original([[100.0, 200.0, 300.0, 400.0]], "qwen2_5_vl", (2550, 3300), **limits)
    response = "[" + ", ".join(f"{v:.6f}" for v in model[0]) + "]"
    parsed_, _ = read_prediction(response, PerceptionSettings(coord_frame="qwen2_5_vl", **limits), (2550, 3300))
    np.testing.assert_allclose(parsed_.coords, [[100.0, 200.0, 300.0, 400.0]], atol=1e-3)


# ------------------------------------------------------------------ task scores worked out by hand


def test_counting_counts_what_the_benchmark_counts():
    one = [[100, 100]]
    dup = score("pixmo_count", '[{"point_2d":[100,100]},{"point_2d":[100,100]}]', one, coord_frame="absolute")
    assert (dup["location"], dup["count"], dup["score"]) == (0.5, 0.0, 1.5)  # 1 / max(2, 1); a repeat is a miscount
    capped = score("pixmo_count", '[{"point_2d":[100,100]},{"point_2d":[300,300]}]', [[100, 100], [300, 300]],
                   coord_frame="absolute", max_predictions="1")  # fmt: skip
    assert (capped["location"], capped["count"], capped["n_pred"], capped["over_cap"]) == (0.5, 1.0, 2, 1)
    broken = score("pixmo_count", '[{"point_2d":[100,100]},{"point_2d":[1,"x"]}]', one, coord_frame="absolute")
    assert (broken["format"], broken["location"], broken["count"], broken["dropped"]) == (0.0, 1.0, 1.0, 1)
    none = score("pixmo_count", "[]", one, coord_frame="absolute")
    assert (none["format"], none["location"], none["count"], none["score"]) == (1.0, 0.0, 0.0, 1.0)
    weighted = score("pixmo_count", '[{"point_2d":[100,100]}]', one, coord_frame="absolute",
                     format_weight="2", location_weight="3", count_weight="5")  # fmt: skip
    assert weighted["score"] == 10.0


def test_ocr_format_and_thinking():
    special = score("pageocr", "<|im_end|>Hello", "Hello")
    assert special["format"] == 0.0 and special["n_chars"] == 15
    assert special["accuracy"] == pytest.approx(1 - 10 / 15)
    think = "<think>\nx\n</think>\n<answer>\nHello\n</answer>"
    assert score("pageocr", think, "Hello", thinking="true")["score"] == 2.0
    assert score("pageocr", "Hello", "Hello", thinking="true")["format"] == 0.0  # no template
    assert score("pageocr", "   ", "Hello") == {"score": 0.0, "format": 0.0, "accuracy": 0.0, "n_chars": 0}
    assert score("pageocr", "Hello", "Hello", accuracy_weight="3", format_weight="0.5")["score"] == 3.5
    with pytest.raises(ValueError, match="^ground_truth: expected the page text as a non-empty string, got 7$"):
        get_task("pageocr").validate(7, {})


def test_detection_labels_normalise_and_unlabelled_boxes_break_the_format():
    gt = [{"bbox": [0, 0, 10, 10], "label": "traffic light"}]
    assert score("coco_detection", '[{"bbox_2d":[0,0,10,10],"label":"Traffic_Light "}]', gt,
                 coord_frame="absolute")["score"] == 4.0  # fmt: skip
    cat = [{"bbox": [0, 0, 10, 10], "label": "cat"}]
    extra = score("coco_detection", '[{"bbox_2d":[0,0,10,10],"label":"cat"},{"bbox_2d":[20,20,30,30]}]', cat,
                  coord_frame="absolute")  # fmt: skip
    assert extra["format"] == 0.0 and extra["location"] == 0.5 and extra["recall"] == pytest.approx(2 / 3)
    weighted = score("coco_detection", "[]", cat, coord_frame="absolute", missing_weight="2", format_weight="3")
    assert weighted["score"] == 3 - 2
    assert detection.normalize_label(None) == "" and detection.normalize_label(" A__b ") == "a b"


def test_detection_ground_truth_errors_name_the_object_and_field():
    bad = [
        ("cat", "ground_truth: expected a list of {'bbox': [x1, y1, x2, y2], 'label': name}, got 'cat'"),
        ([{"bbox": [0, 0, 1, 1], "label": "cat"}, 5], "ground_truth[1]: expected an object with 'bbox' and 'label'"),
        ([{"label": "cat"}], "ground_truth[0].bbox: missing"),
        ([{"bbox": [0, 0, 1, 1], "label": " "}], "ground_truth[0].label: expected a non-empty category name, got ' '"),
        ([{"bbox": [0, 0, 1, 1], "label": 3}], "ground_truth[0].label: expected a non-empty category name, got 3"),
        ([{"bbox": [1, 0, 1, 1], "label": "cat"}], "ground_truth[0].bbox: expected [x1, y1, x2, y2] with x1 < x2"),
    ]
    for ground_truth, message in bad:
        with pytest.raises(ValueError) as info:
            detection.gt_objects(ground_truth)
        assert str(info.value).startswith(message), ground_truth
    boxes, labels = detection.gt_objects('[{"bbox": [0, 0, 1, 1], "label": "Cat"}]')
    assert boxes.tolist() == [[0, 0, 1, 1]] and labels == ["cat"]


def test_grounding_reads_the_first_box_and_a_broken_extra_breaks_the_format():
    gt = [0, 0, 10, 10]
    assert score("refcoco", "[0,0,10,10] [0,0,5,5]", gt, coord_frame="absolute")["score"] == 2.0
    broken = score("refcoco", "[0,0,10,10] [5,5,1,1]", gt, coord_frame="absolute")
    assert (broken["format"], broken["iou"], broken["dropped"], broken["score"]) == (0.0, 1.0, 1, 1.0)
    weighted = score("refcoco", "[0,0,10,5]", gt, coord_frame="absolute", iou_weight="4", format_weight="0.5")
    assert weighted["score"] == 0.5 + 4 * 0.25
    assert score("refcoco", "nothing", gt, coord_frame="absolute")["score"] == 0.0


def test_geo3k_combine_annotations_and_validation():
    task = get_task("geo3k_visual")
    s = task.settings()
    assert task.combine({"format": 1.0, "accuracy": 1.0, "visual": 0.5, "ngram_penalty": -0.5}, s) == pytest.approx(
        0.1 + 0.9 + 0.35 - 0.5
    )
    assert task.combine({"format": None, "accuracy": None, "visual": None, "ngram_penalty": None}, s) == 0.0
    assert task.annotations({"visual_annotations": []}) is None and task.annotations({}) is None
    assert task.annotations({"visual_annotations": ["a", 2]}) == ["a", "2"]
    task.validate(13, {"visual_annotations": ["AB = 5"]})
    for gt, info, message in (
        (True, {}, "ground_truth: expected a non-empty answer string, got True"),
        (" ", {}, "ground_truth: expected a non-empty answer string, got ' '"),
        ([1], {}, "ground_truth: expected a non-empty answer string, got [1]"),
        ("1", {"visual_annotations": "AB = 5"}, "extra_info.visual_annotations: expected a list of strings, got str"),
        ("1", {"visual_annotations": 5}, "extra_info.visual_annotations: expected a list of strings, got int"),
        ("1", {"visual_annotations": ["a", ""]}, "extra_info.visual_annotations[1]: expected a non-empty string"),
    ):
        with pytest.raises(ValueError) as err:
            task.validate(gt, info)
        assert str(err.value).startswith(message)
    row = score("geo3k_visual", "<think>\nx\n</think>\n<answer>\n\\boxed{2}\n</answer>", "2", format_rule="paper")
    assert row == {"score": pytest.approx(0.1), "format": 1.0, "ngram_penalty": 0.0}


def test_matching_helpers():
    from perception_r1.rewards.matching import distance_kernel, hungarian_match, match_points, point_distances

    assert distance_kernel(np.array([0.0, 5.0, 20.0]), 10).tolist() == [1.0, 0.5, 0.0]
    assert distance_kernel(np.array([0.0, 5.0]), 0).tolist() == [1.0, 0.0]  # scale 0: only exact hits
    assert distance_kernel(np.array([0.0, 0.5, 1.0, 3.0]), 1).tolist() == [1.0, 0.5, 0.0, 0.0]  # a one-pixel scale
    assert distance_kernel([0, 2], 4).tolist() == [1.0, 0.5]  # integer distances, a list
    assert point_distances(np.array([[0, 0]]), np.array([[3, 4], [0, 1]])).tolist() == [[5.0, 1.0]]
    assert point_distances(np.zeros((0, 2)), np.array([[3, 4]])).shape == (0, 1)
    m = hungarian_match(np.array([[np.nan, 0.5], [np.inf, 0.0]]))
    assert (m.pred_idx.tolist(), m.gt_idx.tolist(), m.total, len(m)) == ([0], [1], 0.5, 1)
    assert len(hungarian_match(np.array([1.0, 2.0]))) == 0 and len(hungarian_match(np.zeros((0, 3)))) == 0
    match, distance = match_points(np.array([[0, 0], [10, 0]]), np.array([[9, 0]]), scale=10)
    assert match.pred_idx.tolist() == [1] and match.total == pytest.approx(0.9) and distance.shape == (2, 1)


def test_quick_verdict_decides_only_what_is_certain():
    """Plain numbers: equal values are 1, values more than 0.1 % apart (of the larger, at least of 1) are 0, and
    anything closer, or not a plain number, is left to math-verify (``None``)."""
    from perception_r1.rewards.math_answer import quick_verdict

    cases = {
        ("13", "13.0"): 1.0, (" 13 ", "13"): 1.0, (".5", "0.5"): 1.0, ("13", "13", "block"): 1.0,
        ("13", "26"): 0.0, ("1000", "1001.5"): 0.0, ("0", "0.002"): 0.0, ("-2", "+2"): 0.0,
        ("13", "x=13"): None, ("1000", "1000.5"): None, ("0.1", "0.1001"): None, ("0", "0.0005"): None,
        ("1e3", "1000"): None,
        # exactly 0.1 % apart is still close; 0.09995 % of the larger is close either way round (0.1 % of the smaller)
        ("1000", "999"): None, ("1000", "1001.0005"): None, ("1001.0005", "1000"): None,
    }  # fmt: skip
    assert {k: quick_verdict(k) for k in cases} == cases
    for key, verdict in cases.items():  # where it answers, math-verify agrees
        if verdict is not None:
            assert verify_answer(key[0].strip(), key[1].strip(), 5.0) == verdict, key


PAPER_THINK = re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\\boxed{.+?}.*?\n</answer>$", re.DOTALL)


@pytest.mark.parametrize(
    "text",
    [
        "<think>\na\n</think>\n<answer>\n\\boxed{1}\n</think>\n<answer>\nno\n</answer>",  # the box is in the 1st split
        "<think>\na\n</think>\n<answer>\nno\n</think>\n<answer>\n\\boxed{1}\n</answer>",
        "<think>\n\n</think>\n<answer>\n\\boxed{x}\n</answer>",
        "<think>\na\n</think>\n<answer>\n\\boxed{}\n</answer>",
        "<think>\na\n</think>\n<answer>\n\\boxed{}}\n</answer>",
        "<think>\na\n</think>\n<answer>\n</answer>",
        "<think>\na\n</think>\n<answer>\n\\boxed{1} and \\boxed{\n</answer>",  # the first box is closed
        "<think>\na\n</think>\n<answer>\n\\boxed{\n</answer>",
        " <think>\na\n</think>\n<answer>\n\\boxed{1}\n</answer>",
        "<think>\na\n</think>\n<answer>\n\\boxed{1}\n</answer>\n",
    ],
)
def test_paper_rule_is_exactly_the_original_regex(text):
    assert format_reward(text, rule="paper") == float(PAPER_THINK.fullmatch(text) is not None)


def test_entry_point_plugins_register_their_tasks(tmp_path, monkeypatch):
    """A third-party package registers a scorer through the ``perception_r1.tasks`` entry-point group (a real
    distribution on ``sys.path``: its dist-info declares the entry point, importing its module registers the task)."""
    import importlib
    import sys

    from perception_r1.rewards import registry

    (tmp_path / "pr1_plugin_demo.py").write_text(
        "from perception_r1.rewards.registry import Task, register_task\n"
        "from perception_r1.rewards.ocr import OcrSettings, combine, rule_components, validate\n"
        "register_task(Task('demo_plugin_task', OcrSettings, validate, rule_components, combine, ('format',)))\n"
    )
    info = tmp_path / "pr1_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pr1-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[perception_r1.tasks]\ndemo = pr1_plugin_demo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))
    try:
        assert "demo_plugin_task" not in registry._TASKS
        registry._load_builtin_tasks()
        assert registry._TASKS["demo_plugin_task"].data_source == "demo_plugin_task"
    finally:
        sys.modules.pop("pr1_plugin_demo", None)


def test_settings_classes_without_presets_have_none():
    from perception_r1.rewards.registry import presets_of

    @dataclasses.dataclass(frozen=True)
    class Plain:
        weight: float = 1.0

    assert presets_of(Plain) == {}
    assert presets_of(ocr.OcrSettings)["paper"]["case_sensitive"] is True


def test_empty_matches_are_typed():
    from perception_r1.rewards.matching import hungarian_match

    m = hungarian_match(np.zeros((0, 2)))
    assert m.pred_idx.dtype == np.int64 and m.gt_idx.dtype == np.int64 and m.scores.dtype == np.float64
    assert m.total == 0.0 and len(m) == 0


def test_rows_are_scored_in_the_frame_they_record():
    """No ``coord_frame`` setting: a row built for ``absolute`` pixels is read in pixels, not in Qwen2-VL's
    0-1000 frame (which would put [100,100,200,200] at [64,48,128,96] on a 640×480 image)."""
    recorded = {"image_size": [640, 480], "coord_frame": "absolute"}
    assert score("refcoco", "[100,100,200,200]", [100, 100, 200, 200], recorded)["iou"] == 1.0
    assert score("refcoco", "[100,100,200,200]", [100, 100, 200, 200])["iou"] < 0.2
    points = score("pixmo_count", '[{"point_2d": [100, 100]}]', [[100, 100]], recorded)
    assert points["location"] == 1.0
    det = score("coco_detection", '[{"bbox_2d": [100,100,200,200], "label": "cat"}]',
                [{"bbox": [100, 100, 200, 200], "label": "cat"}], recorded)  # fmt: skip
    assert det["score"] == 4.0


def test_degenerate_boxes_have_no_overlap():
    from perception_r1.rewards.boxes import box_iou

    point = np.array([5, 5, 5, 5])
    assert float(box_iou(point, point)) == 0.0  # empty union: 0, not a perfect match
    assert float(box_iou(np.array([0, 0, 10, 10]), np.array([0, 0, 10, 10]))) == 1.0


def test_iou_of_empty_unions_is_quiet():
    """0/0 where the union is empty is masked, not warned about (a warning per GRPO rollout floods the logs)."""
    import warnings

    from perception_r1.rewards.boxes import box_iou, pairwise_iou

    point = np.array([[5.0, 5.0, 5.0, 5.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert box_iou(point, point).tolist() == [0.0]
        assert pairwise_iou(point, np.vstack([point, [0, 0, 10, 10]])).tolist() == [[0.0, 0.0]]


def test_points_always_come_as_n_by_2_with_their_labels():
    from perception_r1.rewards.boxes import parse_points

    for text in ["", None, "no numbers here", "[]", "```json\n[]\n```", "[1, 2, 3]"]:
        assert parse_points(text).coords.shape == (0, 2), text  # type: ignore[arg-type]
        assert parse_points(text, box_centres=False).coords.shape == (0, 2), text  # type: ignore[arg-type]
    assert parse_points("[]").syntax == "json_empty" and parse_points("[]", box_centres=False).syntax == "json_empty"
    centres = parse_points('[{"bbox_2d": [0, 0, 10, 20], "label": "cat"}, {"bbox_2d": [10, 10, 20, 20]}]')
    assert centres.coords.tolist() == [[5.0, 10.0], [15.0, 15.0]] and centres.labels == ["cat", None]
    assert centres.syntax == "json"
    many = " ".join(f"({i},{i}),({i + 2},{i + 2})" for i in range(5))  # five boxes as tuples: their centres
    capped = parse_points(many, max_items=3)
    assert capped.coords.tolist() == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]] and capped.over_cap == 2


def test_counting_and_grounding_edge_answers():
    bad_points = score("pixmo_count", '[{"point_2d": [1, "x"]}]', [], coord_frame="absolute")
    assert bad_points["count"] == 0.0 and bad_points["format"] == 0.0  # an unreadable answer is no "zero objects"
    assert score("refcoco", "[]", [0, 0, 10, 10], coord_frame="absolute")["format"] == 0.0  # no box is no answer
    with pytest.raises(ValueError, match=r"^ground_truth: expected a list of \[x, y\] points, got str$"):
        counting.gt_points("cat")
    with pytest.raises(ValueError, match=r"^ground_truth\[1\]: expected 2 finite numbers"):
        counting.gt_points([[1, 2], [3]])
    with pytest.raises(ValueError, match=r"^ground_truth: expected 4 finite numbers"):
        get_task("refcoco").validate([1, 2, 3], SIZE)


def test_point_distances_of_unsigned_integer_points_do_not_wrap():
    from perception_r1.rewards.matching import point_distances

    # 30² + 40² = 2500 overflows uint8 (3² + 4² would not: its wrapped squares sum to the same 25)
    a, b = np.array([[0, 0]], dtype=np.uint8), np.array([[30, 40]], dtype=np.uint8)
    assert point_distances(a, b).tolist() == [[50.0]] and point_distances(b, a).tolist() == [[50.0]]


def test_ngram_settings_reach_the_penalty():
    """21 equal words with ``ngram_size=10``: 12 windows, 1 unique: (1 - 1/12) · -2.0; a -4.0 cap doubles it."""
    loop = " ".join(["again"] * 21)
    assert score("geo3k_visual", loop, "2", ngram_size="10")["ngram_penalty"] == pytest.approx(-2.0 * 11 / 12)
    assert score("geo3k_visual", loop, "2", ngram_max_penalty="-4.0")["ngram_penalty"] == -2.0


def test_a_task_may_not_list_score_among_its_components():
    """Every output row starts with ``score``; a plugin task listing it again would give verl a duplicate key."""
    from perception_r1.rewards.registry import Task, register_task, registered_tasks

    task = Task("plugin_task", object, lambda gt, info: None, lambda *a: {}, lambda c, s: 0.0, ("score", "iou"))
    with pytest.raises(ValueError, match="output_keys must not list 'score'"):
        register_task(task)
    assert "plugin_task" not in registered_tasks()


def test_detection_predictions_on_an_image_without_objects_find_and_miss_nothing():
    from perception_r1.rewards.detection import detection_components

    parts = detection_components(np.array([[0.0, 0.0, 10.0, 10.0]]), ["cat"], np.zeros((0, 4)), [])
    assert parts == {"location": 0.0, "classification": 0.0, "recall": 0.0, "missing": 0.0}


def test_detection_labels_of_different_lengths_compare_by_name():
    from perception_r1.rewards.detection import detection_components

    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    assert detection_components(box, ["traffic light"], box, ["traffic light"])["classification"] == 1.0
    assert detection_components(box, ["cat"], box, ["catamaran"])["classification"] == 0.0


def test_detection_validation_checks_the_recorded_frame():
    from perception_r1.rewards.detection import validate

    gt = [{"bbox": [0, 0, 10, 10], "label": "cat"}]
    validate(gt, {"image_size": [100, 100]})
    with pytest.raises(ValueError, match="coord_frame"):
        validate(gt, {"image_size": [100, 100], "coord_frame": "yolo"})


def test_detection_counts_predictions_past_the_cap_in_n_pred():
    from perception_r1.rewards.detection import DetectionSettings, rule_components

    boxes = ", ".join(json.dumps({"bbox_2d": [i, 0, i + 5, 10], "label": "cat"}) for i in range(5))
    settings = DetectionSettings(max_predictions=3, coord_frame="absolute")
    gt = [{"bbox": [0, 0, 5, 10], "label": "cat"}]
    parts = rule_components(f"[{boxes}]", gt, {"image_size": [100, 100]}, settings)
    assert (parts["n_pred"], parts["over_cap"]) == (5, 2)


@dataclasses.dataclass(frozen=True)
class _StringAnnotated:
    """Annotations are strings here (``from __future__ import annotations``), as in every settings class."""

    weight: float = 1.0
    limit: int | None = 3
    rule: typing.Literal["paper", "strict"] = "paper"
    on: bool = False


def test_settings_with_string_annotations_are_coerced_to_the_resolved_types():
    assert isinstance(dataclasses.fields(_StringAnnotated)[0].type, str)
    s = build_settings(_StringAnnotated, {"weight": "0.5", "limit": "7", "rule": "strict", "on": "yes"})
    assert (s.weight, s.limit, s.rule, s.on) == (0.5, 7, "strict", True)
    assert build_settings(_StringAnnotated, {"limit": "none"}).limit is None
    with pytest.raises(ValueError, match=r"setting 'rule': expected one of \['paper', 'strict'\], got 'lax'"):
        build_settings(_StringAnnotated, {"rule": "lax"})


def test_a_preset_other_tasks_declare_pins_nothing_and_an_unknown_one_is_refused():
    from perception_r1.rewards.registry import check_setting_keys, selected_preset

    # "paper" is declared by the built-in tasks, not by this class: the defaults stay
    assert build_settings(_StringAnnotated, {"preset": "paper", "on": "1"}) == _StringAnnotated(on=True)
    for nothing in (None, "", " None ", "default", "DEFAULT"):
        assert selected_preset({"preset": nothing}) is None
    assert selected_preset({}) is None
    assert selected_preset({"preset": " paper "}) == "paper"
    with pytest.raises(ValueError, match=r"setting 'preset': unknown preset 'papr'; known presets: \['paper'\]"):
        build_settings(_StringAnnotated, {"preset": "papr"})
    with pytest.raises(ValueError, match="unknown preset 'papr'"):
        check_setting_keys({"preset": "papr", "format_weight": 1.0})
    check_setting_keys({"preset": "default", "format_weight": 1.0})
