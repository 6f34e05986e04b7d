"""Reading boxes and points out of model outputs, and converting between coordinate frames.

One parser for every perception task (grounding, counting, detection) and for evaluation, so a box means the
same thing in training, in ``perception-r1 score`` and in benchmark metrics. Accepted syntaxes, tried in this
order (the first that yields any item wins, so a JSON object's inner ``[x1, y1, x2, y2]`` is not counted twice):

1. JSON objects ``{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}`` / ``{"point_2d": [x, y], "label": ...}``,
   alone or in a list, with or without a ```` ```json ```` fence. Each flat ``{...}`` object is read on its own,
   so a truncated or slightly broken list (single quotes, trailing commas, a missing ``]``) still yields every
   complete object.
2. Qwen2-VL special-token boxes ``<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``
   and the same with the special tokens stripped: ``cat (x1,y1),(x2,y2)``.
3. Plain lists ``[x1, y1, x2, y2]`` (for points: ``[x, y]``).

Boxes are ``[x1, y1, x2, y2]`` with ``x1 < x2`` and ``y1 < y2``. Items with non-finite numbers, reversed or
zero-area boxes, or text instead of numbers are dropped and counted (``dropped``); valid items beyond
``max_items`` are ignored and counted (``over_cap``). Nothing here raises on model output.

Frames (the ``coord_frame`` run setting): ``qwen2_vl`` and ``qwen3_vl`` are integers in ``[0, 1000)`` relative to
the image; ``qwen2_5_vl`` is absolute pixels of the image as resized by the processor (:func:`smart_resize`, factor
28, the run's ``min_pixels``/``max_pixels``); ``absolute`` is pixels of the original image. Ground truth is always
original-image pixels; :func:`to_original` / :func:`from_original` are the one place frames are converted.

Which frame a row is scored in (:func:`resolve_frame`): the data builders record the frame and pixel limits the
data was built for in ``extra_info`` (``coord_frame``, ``min_pixels``, ``max_pixels``); a row is scored in its
recorded frame unless the run sets ``coord_frame`` explicitly, and a row whose recorded frame contradicts an
explicit one is refused (``ValueError``), because scoring it would silently put every box in the wrong place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

CoordFrame = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "absolute"]
COORD_FRAMES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "absolute")
DEFAULT_MIN_PIXELS = 56 * 56  # 3136, Qwen2VLImageProcessor's default
DEFAULT_MAX_PIXELS = 28 * 28 * 16384  # 12845056, Qwen2VLImageProcessor's default
DEFAULT_MAX_ITEMS = 300
RELATIVE_SCALE = 1000.0  # qwen2_vl / qwen3_vl coordinates are in [0, 1000)


@dataclass(frozen=True)
class PerceptionSettings:
    """Run settings shared by every perception task (same name, same meaning in each).

    ``coord_frame``: the frame of the model's coordinates; unset (``None``), each row is scored in the frame its
    ``extra_info.coord_frame`` records, else ``qwen2_vl`` (:func:`resolve_frame`). ``min_pixels``/``max_pixels``:
    the processor's limits (used by ``qwen2_5_vl`` to recover the resized image size); unset, the row's recorded
    limits, else the processor's defaults. ``max_predictions``: valid predictions beyond this are ignored and
    counted. ``thinking``: the response must follow the ``<think>…</think><answer>…</answer>`` template (the
    paper's default is no thinking); ``format_weight``: the weight of the ``format`` component.
    """

    coord_frame: CoordFrame | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    max_predictions: int = DEFAULT_MAX_ITEMS
    thinking: bool = False
    format_weight: float = 1.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Perception-R1 (Yu et al.): no thinking, every component weight 1 (frames belong to the data, not here).
        "paper": {"thinking": False, "format_weight": 1.0, "max_predictions": DEFAULT_MAX_ITEMS},
    }


S = TypeVar("S", bound=PerceptionSettings)
DEFAULT_FRAME = "qwen2_vl"
"""The frame of a row that records none, when the run sets none either (Qwen2-VL, the paper's base model)."""
_SAME_MATH = {"qwen3_vl": "qwen2_vl"}  # frames whose conversion is identical never contradict each other


@dataclass(frozen=True)
class Frame:
    """The coordinate frame one row is scored in: ``name`` plus the processor limits ``qwen2_5_vl`` needs."""

    name: str
    min_pixels: int
    max_pixels: int


def _recorded_pixels(extra_info: Any, key: str) -> int | None:
    value = extra_info.get(key) if hasattr(extra_info, "get") else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or value != int(value):
        raise ValueError(f"extra_info.{key}: expected a positive integer pixel count, got {value!r}")
    if int(value) <= 0:
        raise ValueError(f"extra_info.{key}: expected a positive integer pixel count, got {value!r}")
    return int(value)


def recorded_frame(extra_info: Any) -> tuple[str | None, int | None, int | None]:
    """``(coord_frame, min_pixels, max_pixels)`` a row records (``None`` where absent); ``ValueError`` when bad."""
    frame = extra_info.get("coord_frame") if hasattr(extra_info, "get") else None
    if frame is not None and frame not in COORD_FRAMES:
        raise ValueError(f"extra_info.coord_frame: expected one of {list(COORD_FRAMES)}, got {frame!r}")
    return frame, _recorded_pixels(extra_info, "min_pixels"), _recorded_pixels(extra_info, "max_pixels")


def settings_for_row(settings: S, extra_info: Any) -> S:
    """``settings`` with the frame of one row filled in (:func:`resolve_frame`), for callers that hand settings to
    functions without the row (evaluation metrics); ``ValueError`` on a contradicting row."""
    frame = resolve_frame(settings, extra_info or {})
    return dataclasses.replace(
        settings, coord_frame=frame.name, min_pixels=frame.min_pixels, max_pixels=frame.max_pixels
    )


def check_frame(extra_info: Any, settings: PerceptionSettings) -> None:
    """``Task.check_settings`` of the coordinate tasks: ``ValueError`` when the row contradicts the run's frame."""
    resolve_frame(settings, extra_info or {})


def resolve_frame(settings: PerceptionSettings, extra_info: Any) -> Frame:
    """The frame to score one row in: the run's explicit settings, else what the row records, else the defaults.

    ``ValueError`` naming the field and both values when the row records a frame that contradicts the run's
    explicit ``coord_frame`` (``qwen2_vl`` and ``qwen3_vl`` share one conversion and never contradict), or, in the
    ``qwen2_5_vl`` frame, pixel limits that contradict the run's explicit ``min_pixels``/``max_pixels``.

    >>> resolve_frame(PerceptionSettings(), {"coord_frame": "qwen2_5_vl", "max_pixels": 1003520}).name
    'qwen2_5_vl'
    """
    frame, min_px, max_px = recorded_frame(extra_info)
    explicit = settings.coord_frame
    if (
        explicit is not None
        and frame is not None
        and _SAME_MATH.get(explicit, explicit) != _SAME_MATH.get(frame, frame)
    ):
        raise ValueError(
            f"extra_info.coord_frame: the row was built for {frame!r} but the run sets coord_frame={explicit!r} "
            "(rebuild the data with --coord-frame, or drop the setting to score each row in its recorded frame)"
        )
    name = explicit or frame or DEFAULT_FRAME
    limits = []
    for key, recorded, default in (
        ("min_pixels", min_px, DEFAULT_MIN_PIXELS),
        ("max_pixels", max_px, DEFAULT_MAX_PIXELS),
    ):
        run_value = getattr(settings, key)
        if name == "qwen2_5_vl" and run_value is not None and recorded is not None and run_value != recorded:
            raise ValueError(
                f"extra_info.{key}: the row was built for {key}={recorded} but the run sets {key}={run_value} "
                "(qwen2_5_vl coordinates are pixels of the resized image, so both must agree)"
            )
        limits.append(run_value if run_value is not None else recorded if recorded is not None else default)
    return Frame(name, limits[0], limits[1])


# ---------------------------------------------------------------- parse results


@dataclass
class Parsed:
    """Items read from a response.

    ``coords``: float array ``(n, 4)`` for boxes or ``(n, 2)`` for points, in the model's frame. ``labels``: one
    per item (``None`` when the syntax carried none). ``dropped``: malformed items seen; ``over_cap``: valid items
    beyond the cap; ``syntax``: which syntax matched (``"json"``, ``"special_tokens"``, ``"tuples"``, ``"list"``,
    ``"json_empty"`` for an empty JSON list) or ``None`` when nothing did.
    """

    coords: np.ndarray
    labels: list[str | None] = field(default_factory=list)
    dropped: int = 0
    over_cap: int = 0
    syntax: str | None = None

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def clean(self) -> bool:
        """A recognised syntax with nothing dropped (the basis of the ``format`` components)."""
        return self.syntax is not None and self.dropped == 0


def _empty(width: int) -> np.ndarray:
    return np.zeros((0, width))  # float64, numpy's default


# ---------------------------------------------------------------- regexes

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_TOK = r"[^(),\s]+"  # a coordinate slot: a number, or text we count as a dropped item
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|\Z)", re.S)
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}")
_BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box")
_POINT_KEYS = ("point_2d", "point")
_LABEL_KEYS = ("label", "name", "category")
_KEY_LIST = re.compile(r"""["']?(bbox_2d|box_2d|bbox|box|point_2d|point)["']?\s*:\s*\[([^\[\]]*)\]?""")
_LABEL_FIELD = re.compile(r"""["']?(?:label|name|category)["']?\s*:\s*["']([^"'\n]*)["']""")
_SPECIAL_BOX = re.compile(
    r"(?:<\|object_ref_start\|>([^<]{0,500})<\|object_ref_end\|>\s*)?<\|box_start\|>([^<]{0,200})(?:<\|box_end\|>)?"
)
_TUPLE_BOX = re.compile(rf"\(\s*({_TOK})\s*,\s*({_TOK})\s*\)\s*,?\s*\(\s*({_TOK})\s*,\s*({_TOK})\s*\)")
_LIST4 = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_LIST2 = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")
_LABEL_STRIP = " \t\r\n,.;:-*\"'`[]{}"


def _number(value: Any) -> float | None:
    """A finite float from a JSON/regex value, or ``None`` (text, bools, NaN, inf and ints too large for a float are
    not numbers here). JSON and the regexes give exact ``int``/``float``/``str``: ``bool`` is not one of them."""
    kind = type(value)
    if kind is float or kind is int:
        try:
            v = float(value)
        except OverflowError:  # a JSON integer of hundreds of digits
            return None
    elif kind is str and re.fullmatch(_NUM, value.strip()):
        v = float(value)  # a string of digits overflows to inf, never raises
    else:
        return None
    return v if math.isfinite(v) else None


def _numbers(values: Sequence[Any], width: int) -> list[float] | None:
    if len(values) != width:
        return None
    out = [_number(value) for value in values]
    return None if None in out else out  # type: ignore[return-value]


def _valid_box(b: list[float] | None) -> bool:
    return b is not None and b[2] > b[0] and b[3] > b[1]


def _clean_label(text: str | None) -> str | None:
    if text is None:
        return None
    text = _SPECIAL_TOKEN.sub(" ", str(text)).strip(_LABEL_STRIP)
    text = " ".join(text.split())
    return text or None


def _json_text(text: str) -> str:
    """The fenced block's content when there is a fence, else the text itself."""
    blocks = _FENCE.findall(text)
    # Equivalent separator mutants: two blocks never make one JSON value, so they are read object by object either way.
    return "\n".join(blocks) if blocks else text  # pragma: no mutate


def _loads_lenient(chunk: str) -> Any:
    """``json.loads`` with light repairs (single quotes, trailing commas); ``None`` when it still fails."""
    for candidate in (chunk, re.sub(r",\s*([}\]])", r"\1", chunk.replace("'", '"'))):
        try:
            return json.loads(candidate)
        except (ValueError, RecursionError):
            continue
    return None


_QUOTES = "\"'"  # stripped from the items of a broken JSON list: '"10"' is the number 10


def _split_list(body: str) -> list[Any]:
    """The comma-separated items of a broken JSON list, unquoted (an empty body is one empty item: not a number)."""
    return [part.strip().strip(_QUOTES) for part in body.split(",")]


# ---------------------------------------------------------------- raw item readers
# Each returns (items, dropped) with items = [(coords, label), ...] in the model's frame, or None if the syntax
# does not occur in the text at all.


def _objects(body: str) -> list[tuple[str, Any]]:
    """``(chunk, parsed-or-None)`` for each flat ``{...}`` object; one C-level parse when the body is valid JSON."""
    try:
        whole = json.loads(body)
    except (ValueError, RecursionError):
        whole = None  # pragma: no mutate (equivalent: any non-list, non-dict takes the object-by-object path)
    if isinstance(whole, dict):
        whole = [whole]
    if isinstance(whole, list) and whole and all(isinstance(o, dict) for o in whole):
        flat = all(not isinstance(v, dict) for o in whole for v in o.values())
        if flat:
            return [("", o) for o in whole]  # pragma: no mutate (equivalent: the chunk is read only for an object that did not parse)
    return [(m.group(0), _loads_lenient(m.group(0))) for m in _FLAT_OBJECT.finditer(body)]


def _read_json(text: str, keys: tuple[str, ...], width: int) -> tuple[list[tuple[list[float], str | None]], int] | None:
    if "{" not in text:
        return None
    body = _json_text(text)
    items: list[tuple[list[float], str | None]] = []
    dropped = 0
    for chunk, obj in _objects(body):
        if isinstance(obj, dict):
            key = next((k for k in keys if k in obj), None)
            if key is None:
                continue
            coords = _numbers(obj[key], width) if isinstance(obj[key], list) else None
            label_value = next((obj[k] for k in _LABEL_KEYS if k in obj), None)
            label = _clean_label(label_value) if isinstance(label_value, (str, int, float)) else None
        else:  # broken JSON inside one object: read the fields with regexes
            found = [m for m in _KEY_LIST.finditer(chunk) if m.group(1) in keys]
            if not found:
                continue
            coords = _numbers(_split_list(found[0].group(2)), width)
            label_match = _LABEL_FIELD.search(chunk)
            label = _clean_label(label_match.group(1)) if label_match else None
        if coords is None or (width == 4 and not _valid_box(coords)):
            dropped += 1
            continue
        items.append((coords, label))
    return (items, dropped) if items or dropped else None  # every match is kept or dropped


def _read_special(text: str) -> tuple[list[tuple[list[float], str | None]], int] | None:
    if "<|box_start|>" not in text:
        return None
    items: list[tuple[list[float], str | None]] = []
    dropped = 0
    label: str | None = None
    for match in _SPECIAL_BOX.finditer(text):
        if match.group(1) is not None:
            label = _clean_label(match.group(1))
        inner = _TUPLE_BOX.fullmatch(match.group(2).strip())
        coords = _numbers(inner.groups(), 4) if inner else None
        if not _valid_box(coords):
            dropped += 1
            continue
        items.append((coords, label))  # type: ignore[arg-type]
    return items, dropped


def _read_tuples(text: str) -> tuple[list[tuple[list[float], str | None]], int] | None:
    items: list[tuple[list[float], str | None]] = []
    dropped = 0
    label: str | None = None
    last = 0  # pragma: no mutate (equivalent: text[None:] is text[0:])
    for match in _TUPLE_BOX.finditer(text):
        before = _clean_label(text[last : match.start()])
        if before is not None and any(ch.isalpha() for ch in before):
            label = before
        last = match.end()
        coords = _numbers(match.groups(), 4)
        if not _valid_box(coords):
            dropped += 1
            continue
        items.append((coords, label))  # type: ignore[arg-type]
    return (items, dropped) if items or dropped else None  # every match is kept or dropped


def _read_lists(text: str, width: int) -> tuple[list[tuple[list[float], str | None]], int] | None:
    pattern = _LIST4 if width == 4 else _LIST2
    items: list[tuple[list[float], str | None]] = []
    dropped = 0
    for match in pattern.finditer(text):
        coords = _numbers(match.groups(), width)
        if coords is None or (width == 4 and not _valid_box(coords)):
            dropped += 1
            continue
        items.append((coords, None))
    return (items, dropped) if items or dropped else None  # every match is kept or dropped


def _is_empty_json_list(text: str) -> bool:
    return re.fullmatch(r"\s*\[\s*\]\s*", _json_text(text)) is not None


def _finish(found: tuple[list[tuple[list[float], str | None]], int], width: int, syntax: str, max_items: int) -> Parsed:
    items, dropped = found
    cap = max(int(max_items), 0)
    kept = items[:cap]
    # Equivalent dtype mutants: the items are Python floats (_number), and an empty list is float64 too.
    values = np.asarray([c for c, _ in kept], dtype=np.float64)  # pragma: no mutate
    coords = values.reshape(-1, width)  # pragma: no mutate (equivalent: numpy reads any negative size as the rest)
    return Parsed(coords, [lab for _, lab in kept], dropped, len(items) - len(kept), syntax)


def parse_boxes(text: str, max_items: int = DEFAULT_MAX_ITEMS) -> Parsed:
    """Boxes ``(n, 4)`` with labels from a model response, in the model's frame; never raises.

    >>> p = parse_boxes('```json\\n[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}]\\n```')
    >>> p.coords.tolist(), p.labels, p.syntax
    ([[10.0, 20.0, 30.0, 40.0]], ['cat'], 'json')
    >>> parse_boxes("<|object_ref_start|>dog<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>").labels
    ['dog']
    """
    if not isinstance(text, str) or not text:
        return Parsed(_empty(4))
    found = _read_json(text, _BOX_KEYS, 4)
    if found is not None:
        return _finish(found, 4, "json", max_items)
    found = _read_special(text)
    if found is not None:
        return _finish(found, 4, "special_tokens", max_items)
    found = _read_tuples(text)
    if found is not None:
        return _finish(found, 4, "tuples", max_items)
    found = _read_lists(text, 4)
    if found is not None:
        return _finish(found, 4, "list", max_items)
    if _is_empty_json_list(text):
        return Parsed(_empty(4), syntax="json_empty")
    return Parsed(_empty(4))


def parse_points(text: str, max_items: int = DEFAULT_MAX_ITEMS, box_centres: bool = True) -> Parsed:
    """Points ``(n, 2)`` with labels from a model response, in the model's frame; never raises.

    Reads ``point_2d`` JSON objects first; else (``box_centres``) the centres of boxes in any box syntax; else
    plain ``[x, y]`` lists.

    >>> parse_points('[{"point_2d": [5, 6], "label": "apple"}, {"point_2d": [7, 8]}]').coords.tolist()
    [[5.0, 6.0], [7.0, 8.0]]
    >>> parse_points("(0,0),(10,20)").coords.tolist()
    [[5.0, 10.0]]
    """
    if not isinstance(text, str) or not text:
        return Parsed(_empty(2))
    found = _read_json(text, _POINT_KEYS, 2)
    if found is not None:
        return _finish(found, 2, "json", max_items)
    if box_centres:
        boxes = parse_boxes(text, max_items)
        if boxes.syntax is not None:  # an empty JSON list too: (0, 2) centres, syntax "json_empty"
            c = boxes.coords
            centres = np.stack([(c[:, 0] + c[:, 2]) / 2, (c[:, 1] + c[:, 3]) / 2], axis=1)
            return Parsed(centres, boxes.labels, boxes.dropped, boxes.over_cap, boxes.syntax)
    found = _read_lists(text, 2)
    if found is not None:
        return _finish(found, 2, "list", max_items)
    if _is_empty_json_list(text):
        return Parsed(_empty(2), syntax="json_empty")
    return Parsed(_empty(2))


# ---------------------------------------------------------------- response template


def split_answer(response: str, thinking: bool) -> tuple[str, bool]:
    """``(answer_text, template_ok)`` for the response template.

    No thinking (the paper's default): the whole response is the answer; the template holds when it is non-empty.
    Thinking: the response must be ``<think>…</think>`` then ``<answer>…</answer>`` (surrounding whitespace
    ignored, each tag exactly once); the answer is the answer block, or the whole text when the tags are missing
    (the template then fails, but coordinates are still read, as the released grounding reward does).
    """
    text = response if isinstance(response, str) else ""
    if not thinking:
        return text, bool(text.strip())
    stripped = text.strip()
    tags = ("<think>", "</think>", "<answer>", "</answer>")
    ok = all(stripped.count(tag) == 1 for tag in tags) and stripped.startswith("<think>") and stripped.endswith("</answer>")
    if ok:
        # Each tag occurs once here, so find and rfind agree (equivalent mutants), and two tags never share a position
        # (so `<=` for `<` below is equivalent too).
        think_end, answer_start = stripped.find("</think>"), stripped.find("<answer>")  # pragma: no mutate
        ok = think_end < answer_start and not stripped[think_end + len("</think>") : answer_start].strip()
    start, end = text.rfind("<answer>"), text.rfind("</answer>")
    if start != -1 and end > start:
        return text[start + len("<answer>") : end].strip(), ok
    return text, False


# ---------------------------------------------------------------- frames


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """``(resized_height, resized_width)`` exactly as Qwen2VLImageProcessor resizes an image.

    Both sides become multiples of ``factor`` (28 = patch 14 × merge 2), the pixel count lands in
    ``[min_pixels, max_pixels]`` and the aspect ratio is kept as closely as possible. ``ValueError`` when the
    aspect ratio exceeds 200 (the processor refuses such images too). Tested equal to transformers' own function.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def frame_scale(
    frame: str,
    image_size: Sequence[float],
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[float, float]:
    """``(sx, sy)`` such that ``original = model_coordinate * scale`` for ``frame`` and ``image_size = [w, h]``."""
    w, h = float(image_size[0]), float(image_size[1])
    if frame in ("qwen2_vl", "qwen3_vl"):
        return w / RELATIVE_SCALE, h / RELATIVE_SCALE
    if frame == "qwen2_5_vl":
        rh, rw = smart_resize(int(round(h)), int(round(w)), 28, min_pixels, max_pixels)
        return w / rw, h / rh
    if frame == "absolute":
        return 1.0, 1.0
    raise ValueError(f"coord_frame: expected one of {list(COORD_FRAMES)}, got {frame!r}")


def _scale(coords: np.ndarray, sx: float, sy: float, inverse: bool) -> np.ndarray:
    arr = np.asarray(coords, dtype=np.float64)  # pragma: no mutate (equivalent: the products are floats anyway)
    if arr.size == 0:  # keep (0, 2) points as they are; a shapeless empty input means no boxes
        return arr.reshape(0, arr.shape[1] if arr.ndim == 2 else 4)
    factors = np.tile([sx, sy], arr.shape[-1] // 2)
    return arr / factors if inverse else arr * factors


def to_original(
    coords: np.ndarray,
    frame: str,
    image_size: Sequence[float],
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Boxes ``(n, 4)`` or points ``(n, 2)`` from the model's ``frame`` to original-image pixels."""
    sx, sy = frame_scale(frame, image_size, min_pixels, max_pixels)
    return _scale(coords, sx, sy, inverse=False)  # pragma: no mutate (equivalent: inverse=None is as false)


def from_original(
    coords: np.ndarray,
    frame: str,
    image_size: Sequence[float],
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """The inverse of :func:`to_original` (for building predictions in tests and evaluation); not rounded."""
    sx, sy = frame_scale(frame, image_size, min_pixels, max_pixels)
    return _scale(coords, sx, sy, inverse=True)


def format_boxes_json(boxes: np.ndarray, labels: Sequence[str | None] | None = None, decimals: int | None = 0) -> str:
    """Boxes as the Qwen2.5-VL JSON answer (```` ```json [{"bbox_2d": …, "label": …}] ``` ````); for tests/eval."""
    items = []
    # Equivalent mutants: each value is converted below (dtype), and numpy reads any negative size as "the rest".
    for i, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):  # pragma: no mutate
        coords = [
            int(round(v)) if decimals == 0 else (round(float(v), decimals) if decimals else float(v)) for v in box
        ]
        item: dict[str, Any] = {"bbox_2d": coords}
        if labels is not None and labels[i] is not None:
            item["label"] = labels[i]
        items.append(item)
    return "```json\n" + json.dumps(items) + "\n```"


# ---------------------------------------------------------------- geometry


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``(n, 4)`` boxes (negative extents count as 0)."""
    # Equivalent mutants (as in box_iou): integer boxes give the same areas, and numpy reads any negative size as
    # "the rest".
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # pragma: no mutate
    return np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(n, m)`` of boxes ``a (n, 4)`` and ``b (m, 4)`` (vectorised; 0 where the union is empty)."""
    # Equivalent mutants (as in box_iou): integer boxes give the same IoUs, and numpy reads any negative size as
    # "the rest". Empty inputs need no branch: the broadcasts below give an empty (n, m) float array.
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)  # pragma: no mutate
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)  # pragma: no mutate
    iw = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0)
    ih = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0)
    inter = iw * ih
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    with np.errstate(invalid="ignore"):  # 0/0 where the union is empty (as in box_iou)
        iou = np.where(union > 0, inter / union, 0.0)
    # A guard against rounding: no input is known where inter / union exceeds 1 (none in 4 million random near-equal
    # pairs), so a looser bound is not observable.
    return np.minimum(iou, 1.0)  # pragma: no mutate


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of aligned boxes ``a (n, 4)`` and ``b (n, 4)``; a scalar array for single boxes."""
    # Equivalent mutants: integer input gives the same IoU (the division is in floats either way), and numpy reads
    # any negative size as "the rest".
    a2 = np.asarray(a, dtype=np.float64).reshape(-1, 4)  # pragma: no mutate
    b2 = np.asarray(b, dtype=np.float64).reshape(-1, 4)  # pragma: no mutate
    lt = np.maximum(a2[:, :2], b2[:, :2])
    rb = np.minimum(a2[:, 2:], b2[:, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(a2) + box_area(b2) - inter
    # union = 0 only where inter = 0 (areas count negative extents as 0): 0/0 is the one case, masked by the where
    with np.errstate(invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)  # in [0, 1]: 0 <= inter <= union by construction
    return iou if np.ndim(a) > 1 else iou.reshape(())


# ---------------------------------------------------------------- ground truth helpers (raise ValueError)


def read_image_size(extra_info: Any, field_name: str = "extra_info.image_size") -> tuple[float, float]:
    """``(w, h)`` from ``extra_info["image_size"]``; ``ValueError`` naming the field when missing or malformed."""
    size = extra_info.get("image_size") if hasattr(extra_info, "get") else None
    if size is None:
        raise ValueError(f"{field_name}: missing; expected [width, height] of the original image in pixels")
    if isinstance(size, str):
        size = _loads_lenient(size)
    try:
        values = [float(v) for v in size]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{field_name}: expected [width, height] numbers, got {size!r}") from None
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{field_name}: expected [width, height] with positive finite numbers, got {size!r}")
    w, h = values
    if max(w, h) / min(w, h) > 200:
        raise ValueError(f"{field_name}: aspect ratio above 200 (the Qwen processors refuse such images), got {size!r}")
    return w, h


def as_json(value: Any) -> Any:
    """Ground truth stored as a JSON string (parquet-friendly) is decoded; anything else is returned as is."""
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def gt_array(value: Any, width: int, field_name: str, boxes: bool = True) -> np.ndarray:
    """Ground-truth coordinates as a finite float array ``(width,)``; ``ValueError`` naming ``field_name``."""
    try:
        arr = np.asarray(list(value), dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{field_name}: expected {width} numbers, got {value!r}") from None
    if arr.shape != (width,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{field_name}: expected {width} finite numbers, got {value!r}")
    if boxes and not (arr[2] > arr[0] and arr[3] > arr[1]):
        raise ValueError(f"{field_name}: expected [x1, y1, x2, y2] with x1 < x2 and y1 < y2, got {arr.tolist()}")
    return arr


# ---------------------------------------------------------------- one call for the task modules


def read_prediction(
    response: str,
    settings: PerceptionSettings,
    image_size: Sequence[float],
    points: bool = False,
    extra_info: Any = None,
) -> tuple[Parsed, bool]:
    """Parse the answer part of ``response`` and convert it to original-image pixels; ``(parsed, template_ok)``.

    The frame is :func:`resolve_frame` of ``settings`` and the row's ``extra_info`` (which raises ``ValueError``
    on a contradicting row: bad data, not bad output). ``parsed.coords`` is in original pixels afterwards. Never
    raises on model output.
    """
    frame = resolve_frame(settings, extra_info or {})
    answer, template_ok = split_answer(response, settings.thinking)
    cap = settings.max_predictions
    parsed = parse_points(answer, cap) if points else parse_boxes(answer, cap)
    try:
        parsed.coords = to_original(parsed.coords, frame.name, image_size, frame.min_pixels, frame.max_pixels)
    except ValueError:  # an unusable frame/size: nothing can be placed on the image
        parsed = Parsed(_empty(2 if points else 4), dropped=len(parsed) + parsed.dropped, syntax=parsed.syntax)
    return parsed, template_ok
