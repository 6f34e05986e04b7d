"""The one box/point parser, frame conversion, smart_resize (against transformers) and IoU (against pycocotools)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from perception_r1.rewards.boxes import (
    COORD_FRAMES,
    box_iou,
    format_boxes_json,
    from_original,
    pairwise_iou,
    parse_boxes,
    parse_points,
    read_image_size,
    smart_resize,
    split_answer,
    to_original,
)

# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text, coords, labels, syntax",
    [
        (
            "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(10,20),(300,400)<|box_end|>",
            [[10, 20, 300, 400]],
            ["the cat"],
            "special_tokens",
        ),
        (  # several boxes for one reference carry its label
            "<|object_ref_start|>cats<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|><|box_start|>(5,6),(7,8)<|box_end|>",
            [[1, 2, 3, 4], [5, 6, 7, 8]],
            ["cats", "cats"],
            "special_tokens",
        ),
        ("the cat(10,20),(300,400)", [[10, 20, 300, 400]], ["the cat"], "tuples"),
        ("(10,20),(300,400)", [[10, 20, 300, 400]], [None], "tuples"),  # no text before it: no label
        ("cat (1, 2), (3, 4)\ndog (5,6),(7,8)", [[1, 2, 3, 4], [5, 6, 7, 8]], ["cat", "dog"], "tuples"),
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]', [[1, 2, 3, 4]], ["cat"], "json"),
        (
            '```json\n[\n  {"bbox_2d": [1, 2, 3, 4], "label": "cat"},\n  {"bbox_2d": [5.5, 6, 7, 8], "label": "dog"}\n]\n```',
            [[1, 2, 3, 4], [5.5, 6, 7, 8]],
            ["cat", "dog"],
            "json",
        ),
        ('{"bbox_2d": [1, 2, 3, 4], "label": "cat"}', [[1, 2, 3, 4]], ["cat"], "json"),
        # valid JSON is read whole, so braces inside a label are text (object by object, they would split it)
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a {b} c"}]', [[1, 2, 3, 4]], ["a {b} c"], "json"),
        ('{"bbox_2d": [1, 2, 3, 4], "label": "a {b} c"}', [[1, 2, 3, 4]], ["a {b} c"], "json"),
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}, 5]', [[1, 2, 3, 4]], ["cat"], "json"),  # a non-object item
        # objects without a box key are skipped, whole or broken, and reading goes on
        ('[{"label": "x"}, {"bbox_2d": [1, 2, 3, 4], "label": "cat"}]', [[1, 2, 3, 4]], ["cat"], "json"),
        ('[{label: x}, {"bbox_2d": [1, 2, 3, 4], "label": "cat"}]', [[1, 2, 3, 4]], ["cat"], "json"),
        # slightly broken JSON: single quotes, trailing commas, missing closing bracket, truncated last object
        (
            "[{'bbox_2d': [1, 2, 3, 4,], 'label': 'cat',}, {\"bbox_2d\": [5, 6, 7, 8], \"label\": \"dog\"",
            [[1, 2, 3, 4]],
            ["cat"],
            "json",
        ),
        ('[{"bbox_2d": [1, 2, 3, 4] "label": "cat"}]', [[1, 2, 3, 4]], ["cat"], "json"),  # missing comma
        ("[10, 20, 30, 40]", [[10, 20, 30, 40]], [None], "list"),
        ("The box is [10.5, 20, 30, 40.25].", [[10.5, 20, 30, 40.25]], [None], "list"),
        ("[[1, 2, 3, 4], [5, 6, 7, 8]]", [[1, 2, 3, 4], [5, 6, 7, 8]], [None, None], "list"),
        ("[]", [], [], "json_empty"),
        ("```json\n[]\n```", [], [], "json_empty"),
        ("I cannot see any cat.", [], [], None),
        ("", [], [], None),
    ],
)
def test_parse_boxes_syntaxes(text, coords, labels, syntax):
    parsed = parse_boxes(text)
    assert parsed.coords.shape == (len(coords), 4)
    assert parsed.coords.tolist() == [[float(v) for v in box] for box in coords]
    assert parsed.labels == labels
    assert parsed.syntax == syntax
    assert parsed.over_cap == 0


@pytest.mark.parametrize(
    "text, kept, dropped",
    [
        ('[{"bbox_2d": [1, 2, NaN, 4]}, {"bbox_2d": [1, 2, 3, 4]}]', 1, 1),  # non-finite
        ('[{"bbox_2d": [1, 2, Infinity, 4]}]', 0, 1),
        ('[{"bbox_2d": [30, 2, 10, 4]}, {"bbox_2d": [1, 2, 3, 4]}]', 1, 1),  # reversed x
        ('[{"bbox_2d": [1, 4, 3, 4]}]', 0, 1),  # zero height
        ('[{"bbox_2d": [3, 2, 3, 4]}]', 0, 1),  # zero width
        ('[{"bbox_2d": ["a", 2, 3, 4]}, {"bbox_2d": [1, 2, 3]}, {"bbox_2d": "x"}]', 0, 3),  # text / wrong length
        ('[{"bbox_2d": [true, 2, 3, 4]}]', 0, 1),  # a bool is not a number
        ('[{"bbox_2d": "1234"}, {"bbox_2d": 5}]', 0, 2),  # not a list: never read character by character
        ('[{"bbox_2d": [1, 2, 3, 1' + "0" * 400 + ']}, {"bbox_2d": [1, 2, 3, 4]}]', 1, 1),  # no float holds it
        ("<|box_start|>(nan,1),(2,3)<|box_end|><|box_start|>(1,1),(2,3)<|box_end|>", 1, 1),
        ("<|box_start|>(left,top),(right,bottom)<|box_end|>", 0, 1),
        ("cat (5, 5), (1, 1)", 0, 1),
        ("[40, 20, 30, 10]", 0, 1),
        # every bad item is counted, and reading goes on past them
        ("cat (5, 5), (1, 1) dog (6, 6), (2, 2) bird (1, 2), (3, 4)", 1, 2),
        ("[40, 20, 30, 10] [50, 20, 30, 10] [1, 2, 3, 4]", 1, 2),
    ],
)
def test_malformed_items_are_dropped_and_counted(text, kept, dropped):
    parsed = parse_boxes(text)
    assert len(parsed) == kept
    assert parsed.dropped == dropped
    assert not parsed.clean
    assert np.all(np.isfinite(parsed.coords))


def test_cap_counts_items_beyond_it():
    text = "".join(f'{{"bbox_2d": [{i}, 0, {i + 1}, 1], "label": "x"}},' for i in range(10))
    parsed = parse_boxes("[" + text + "]", max_items=4)
    assert len(parsed) == 4 and parsed.over_cap == 6
    assert parsed.coords[:, 0].tolist() == [0, 1, 2, 3]  # the first ones are kept
    assert parse_boxes("[1,2,3,4]" * 3, max_items=0).over_cap == 3


@pytest.mark.parametrize(
    "text",
    [
        None,
        123,
        "{" * 50_000,
        "[1," * 20_000,
        "(1," * 20_000,
        "<|box_start|>" * 5_000,
        "<|object_ref_start|>" * 5_000,
        '{"bbox_2d": [' * 10_000,
        "\x00\ud800 weird",
        '[{"bbox_2d": [1e400, 2, 3, 4]}]',
        '[{"bbox_2d": [1, 2, 3, 1' + "0" * 400 + ']}]',  # an integer too large for a float
        "[1, 2, 3, 1" + "0" * 400 + "]",
        '[{"bbox_2d": [1, 2, 3, 4], "label": {"nested": 1}}]',
    ],
)
def test_hostile_input_never_raises(text):
    for parse in (parse_boxes, parse_points):
        parsed = parse(text)
        assert np.all(np.isfinite(parsed.coords))
        assert parsed.coords.ndim == 2 and parsed.coords.shape[1] == (2 if parse is parse_points else 4)


def test_parse_points():
    parsed = parse_points(
        '```json\n[{"point_2d": [5, 6], "label": "apple"}, {"point_2d": [7, 8], "label": "apple"}]\n```'
    )
    assert parsed.coords.tolist() == [[5, 6], [7, 8]] and parsed.labels == ["apple", "apple"]
    assert parse_points('[{"point_2d": [5]}, {"point_2d": [1, "x"]}]').dropped == 2
    # boxes count through their centres; plain [x, y] lists are the last resort
    assert parse_points("<|box_start|>(0,0),(10,20)<|box_end|>").coords.tolist() == [[5, 10]]
    assert parse_points("[3, 4] and [5, 6]").coords.tolist() == [[3, 4], [5, 6]]
    assert parse_points("[]").syntax == "json_empty" and parse_points("[]").coords.shape == (0, 2)
    assert parse_points("no points").syntax is None


def test_split_answer_templates():
    assert split_answer("[1,2,3,4]", thinking=False) == ("[1,2,3,4]", True)
    assert split_answer("   ", thinking=False)[1] is False
    good = "<think>\nthe cat is left\n</think>\n<answer>[1,2,3,4]</answer>"
    assert split_answer(good, thinking=True) == ("[1,2,3,4]", True)
    assert split_answer("[1,2,3,4]", thinking=True) == ("[1,2,3,4]", False)
    assert split_answer("<answer>[1,2,3,4]</answer>", thinking=True) == ("[1,2,3,4]", False)
    twice = "<think>a</think><answer>[1,2,3,4]</answer><answer>[5,6,7,8]</answer>"
    assert split_answer(twice, thinking=True) == ("[5,6,7,8]", False)  # the last block is the answer
    assert split_answer("[1,2,3,4]</answer>", thinking=True) == ("[1,2,3,4]</answer>", False)  # no opening tag
    assert split_answer("<think>a</think> junk <answer>x</answer>", thinking=True)[1] is False
    for thinking in (False, True):  # a response that is not text is an empty answer, never a template pass
        assert split_answer(None, thinking=thinking) == ("", False)


# ------------------------------------------------------------------ frames


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    rng = np.random.default_rng(0)
    sizes = [(480, 640), (3300, 2550), (307, 957), (150, 1), (1237, 626), (28, 28), (10, 1000), (56, 56), (1, 150), (8000, 9000)]
    sizes += [tuple(int(v) for v in rng.integers(1, 5000, size=2)) for _ in range(300)]
    limits = [(3136, 12845056), (3136, 1003520), (200704, 401408), (256 * 28 * 28, 1280 * 28 * 28)]
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            continue
        for lo, hi in limits:
            assert smart_resize(h, w, 28, lo, hi) == reference(h, w, factor=28, min_pixels=lo, max_pixels=hi), (h, w)
    # 290 x 270 rounds to 280 x 280 = 78,400 px: a pixel count exactly at either limit is kept, not rescaled
    for lo, hi in ((3136, 78400), (78400, 12845056)):
        assert smart_resize(290, 270, 28, lo, hi) == reference(290, 270, factor=28, min_pixels=lo, max_pixels=hi)
        assert smart_resize(290, 270, 28, lo, hi) == (280, 280)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 500)


def test_a_single_flat_box_converts_too():
    np.testing.assert_allclose(to_original([100, 200, 500, 700], "qwen2_vl", (2000, 1000)), [200, 200, 1000, 700])
    np.testing.assert_allclose(from_original([200, 200], "qwen2_vl", (2000, 1000)), [100, 200])


@pytest.mark.parametrize("convert", [to_original, from_original])
def test_empty_inputs_keep_a_coordinate_shape(convert):
    assert convert([], "qwen2_vl", (640, 480)).shape == (0, 4)  # no boxes
    assert convert(np.zeros((0, 2)), "qwen2_5_vl", (640, 480)).shape == (0, 2)  # no points


def test_frames_round_trip_under_the_runs_pixel_limits():
    boxes = np.array([[10.0, 20.0, 300.5, 400.0]])
    limits = {"min_pixels": 200704, "max_pixels": 401408}  # not the defaults: the resized frame differs
    model = from_original(boxes, "qwen2_5_vl", (2550, 3300), **limits)
    assert not np.allclose(model, from_original(boxes, "qwen2_5_vl", (2550, 3300)))
    np.testing.assert_allclose(to_original(model, "qwen2_5_vl", (2550, 3300), **limits), boxes)
    small = from_original(boxes, "qwen2_5_vl", (20, 30), min_pixels=401408)  # upscaled over a raised floor
    np.testing.assert_allclose(to_original(small, "qwen2_5_vl", (20, 30), min_pixels=401408), boxes)
    assert not np.allclose(small, from_original(boxes, "qwen2_5_vl", (20, 30)))


@pytest.mark.parametrize("frame", COORD_FRAMES)
def test_frames_round_trip(frame):
    boxes = np.array([[10.0, 20.0, 300.5, 400.0], [0.0, 0.0, 640.0, 480.0]])
    back = to_original(from_original(boxes, frame, (640, 480)), frame, (640, 480))
    np.testing.assert_allclose(back, boxes)
    points = np.array([[5.0, 6.0]])
    np.testing.assert_allclose(to_original(from_original(points, frame, (640, 480)), frame, (640, 480)), points)


def test_frame_values():
    box = np.array([[100.0, 200.0, 500.0, 700.0]])
    # qwen2_vl / qwen3_vl: thousandths of the image
    np.testing.assert_allclose(to_original(box, "qwen2_vl", (2000, 1000)), [[200, 200, 1000, 700]])
    np.testing.assert_allclose(to_original(box, "qwen3_vl", (2000, 1000)), [[200, 200, 1000, 700]])
    # qwen2_5_vl: pixels of the resized image; 640x480 stays 644x476 under the default limits
    assert smart_resize(480, 640) == (476, 644)
    np.testing.assert_allclose(
        to_original([[644.0, 476.0, 644.0, 476.0]], "qwen2_5_vl", (640, 480)), [[640, 480, 640, 480]]
    )
    # a smaller max_pixels shrinks the resized frame, so the same model pixels mean a larger original region
    small = to_original(box, "qwen2_5_vl", (2550, 3300), max_pixels=1003520)
    large = to_original(box, "qwen2_5_vl", (2550, 3300))
    assert np.all(small > large)
    np.testing.assert_allclose(to_original(box, "absolute", (2000, 1000)), box)
    with pytest.raises(ValueError, match="coord_frame"):
        to_original(box, "yolo", (10, 10))


def test_read_image_size_errors():
    assert read_image_size({"image_size": [640, 480]}) == (640.0, 480.0)
    assert read_image_size({"image_size": "[640, 480]"}) == (640.0, 480.0)
    for bad in (
        {},
        {"image_size": None},
        {"image_size": [640]},
        {"image_size": [0, 480]},
        {"image_size": ["a", 1]},
        {"image_size": [1, 1000]},
    ):
        with pytest.raises(ValueError, match="extra_info.image_size"):
            read_image_size(bad)
    with pytest.raises(ValueError, match=r"^extra_info\.image_size: missing"):
        read_image_size(["not", "a", "mapping"])  # extra_info that is not a dict: missing, not an AttributeError


def test_format_boxes_json_round_trips():
    boxes = np.array([[1.2, 2.0, 30.0, 40.0]])
    assert parse_boxes(format_boxes_json(boxes, ["cat"])).coords.tolist() == [[1, 2, 30, 40]]
    assert parse_boxes(format_boxes_json(boxes, ["cat"], decimals=None)).coords.tolist() == boxes.tolist()


# ------------------------------------------------------------------ IoU


def test_iou_against_pycocotools():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 200, size=(40, 2))
    wh = rng.uniform(1, 120, size=(40, 2))
    a = np.concatenate([xy, xy + wh], axis=1)
    xy = rng.uniform(0, 200, size=(30, 2))
    wh = rng.uniform(1, 120, size=(30, 2))
    b = np.concatenate([xy, xy + wh], axis=1)
    xywh = lambda boxes: np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # noqa: E731
    reference = mask_utils.iou(xywh(a), xywh(b), [0] * len(b))
    np.testing.assert_allclose(pairwise_iou(a, b), reference, atol=1e-12)
    np.testing.assert_allclose(box_iou(a[:30], b), np.diag(reference[:30]), atol=1e-12)
    assert pairwise_iou(a, np.zeros((0, 4))).shape == (40, 0)
    assert float(box_iou([0, 0, 10, 10], [5, 0, 15, 10])) == pytest.approx(1 / 3)
    assert float(box_iou([0, 0, 10, 10], [20, 20, 30, 30])) == 0.0
    assert math.isfinite(float(box_iou([0, 0, 0, 0], [0, 0, 0, 0])))
