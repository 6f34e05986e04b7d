"""Prompts of the perception tasks (Perception-R1, "Pioneering Perception Policy with RL", Table 8).

The paper found explicit thinking does not help perception policies, so prompts ask for the answer directly by
default; :func:`with_thinking` wraps any prompt in the think/answer template for ablations. Every prompt starts
with the ``<image>`` placeholder that verl's ``RLHFDataset`` replaces with the row's image.

The module also holds what the four perception builders (refcoco, pixmo_count, pageocr, coco_detection) share:
finding images and their real sizes (:class:`ImageResolver`), the verl row shape (:func:`make_row`), reading
JSON/JSONL/parquet records, atomic parquet writing with ``extra_info.index``, and the launchers' data check
(``python -m perception_r1.data.perception_prompts --data F --thinking 0|1 [--min-pixels N --max-pixels N]``).

>>> grounding_prompt("man in red shirt")
'<image>Output the bounding box of the man in red shirt in the image.'
>>> ocr_prompt(thinking=True).endswith("</answer> tags.")
True
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from .common import DataError, image_entry, load_image, verl_row, write_parquet_atomic

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"

#: The 80 COCO category names in the order of their official ids (1..90 with gaps).
COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip

GROUNDING_TEMPLATE = "Output the bounding box of the {question} in the image."
COUNTING_TEMPLATE = "Output all the bounding boxes of the {label}"
OCR_TEMPLATE = "OCR this image."
DETECTION_TEMPLATE = "Please output bbox coordinates and names of {categories}."
THINKING_TEMPLATE = (
    "{prompt} Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
)


def with_thinking(prompt: str) -> str:
    """The think/answer variant of a task prompt (the paper's default is no thinking)."""
    return THINKING_TEMPLATE.format(prompt=prompt)


def _finish(text: str, thinking: bool) -> str:
    return IMAGE_PLACEHOLDER + (with_thinking(text) if thinking else text)


def _clean(text: str) -> str:
    """Collapse whitespace and drop a trailing period so templates read naturally."""
    return " ".join(str(text).split()).rstrip(".")


def grounding_prompt(question: str, thinking: bool = False) -> str:
    """RefCOCO-style grounding of one referring expression."""
    return _finish(GROUNDING_TEMPLATE.format(question=_clean(question)), thinking)


def counting_prompt(label: str, thinking: bool = False) -> str:
    """Detect-then-count: ask for every instance of ``label`` (PixMo-Count)."""
    return _finish(COUNTING_TEMPLATE.format(label=_clean(label)), thinking)


def ocr_prompt(thinking: bool = False) -> str:
    """Page OCR."""
    return _finish(OCR_TEMPLATE, thinking)


def detection_prompt(categories: tuple[str, ...] | list[str] = COCO_CATEGORIES, thinking: bool = False) -> str:
    """COCO detection: all category names, comma-separated, in id order."""
    return _finish(DETECTION_TEMPLATE.format(categories=", ".join(categories)), thinking)


def user_message(content: str) -> list[dict[str, str]]:
    """The verl ``prompt`` column: one user turn (the processor's chat template adds the system turn)."""
    return [{"role": "user", "content": content}]


# ---------------------------------------------------------------- row helpers shared by the perception builders
# (the four perception builders share image resolution, record reading and parquet writing; prompts live above)


class ImageResolver:
    """Finds each image file, reads its real size once, and makes the row's ``images`` entry.

    Entries are ``{"bytes": ...}`` by default (``embed=True``: a self-contained parquet, each image checked by
    :func:`perception_r1.data.common.load_image`; Ray workers on every node read the images from the data itself)
    or ``{"image": "<absolute path>"}`` with ``embed=False`` (``--image-paths``: a small parquet, but every path
    must exist on every node), plus ``min_pixels``/``max_pixels`` when set: verl's vision path
    (``qwen_vl_utils.fetch_image``) resizes with them, and a ``qwen2_5_vl`` run must score with the same values.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        embed: bool = True,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else None
        self.embed = embed
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self._sizes: dict[Path, tuple[int, int]] = {}

    @classmethod
    def from_args(cls, args: argparse.Namespace, default_root: str | os.PathLike[str] | None = None) -> ImageResolver:
        return cls(args.image_root or default_root, args.embed_images, args.min_pixels, args.max_pixels)

    def path(self, name: str | os.PathLike[str]) -> Path:
        path = Path(name).expanduser()
        if not path.is_absolute() and self.root is not None:
            path = self.root / path
        return path.resolve()

    def size(self, path: Path, where: str, field: str = "image") -> tuple[int, int]:
        """``(width, height)`` from the file header (cached); ``DataError`` when missing or unreadable."""
        size = self._sizes.get(path)
        if size is None:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as img:
                    size = (int(img.width), int(img.height))
            except FileNotFoundError:
                raise DataError(f"{where}: field {field!r}: image file not found: {path}") from None
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"{where}: field {field!r}: cannot read image {path}: {exc}") from None
            self._sizes[path] = size
        return size

    def resolve(
        self,
        name: str | os.PathLike[str],
        where: str,
        expected_size: tuple[int, int] | None = None,
        field: str = "image",
    ) -> tuple[dict[str, Any], tuple[int, int]]:
        """The ``images`` entry and the real ``(w, h)``; a recorded size that disagrees is an error."""
        path = self.path(name)
        w, h = self.size(path, where, field)
        if expected_size is not None and tuple(int(v) for v in expected_size) != (w, h):
            raise DataError(
                f"{where}: field 'width'/'height': recorded size {expected_size[0]}x{expected_size[1]} "
                f"but {path} is {w}x{h} (ground truth must be in the real image's pixels)"
            )
        if max(w, h) / max(1, min(w, h)) > 200:
            raise DataError(f"{where}: field {field!r}: aspect ratio above 200 ({w}x{h}); Qwen processors refuse it")
        if self.embed:
            return image_entry(load_image(path, where, field), self.min_pixels, self.max_pixels), (w, h)
        entry: dict[str, Any] = {"image": str(path)}
        if self.min_pixels:
            entry["min_pixels"] = int(self.min_pixels)
        if self.max_pixels:
            entry["max_pixels"] = int(self.max_pixels)
        return entry, (w, h)


def make_row(
    data_source: str,
    ability: str,
    prompt: str,
    image: dict[str, Any],
    ground_truth: Any,
    extra_info: dict[str, Any],
    where: str = "row",
) -> dict[str, Any]:
    """One verl row with one image (:func:`perception_r1.data.common.verl_row`)."""
    return verl_row(
        data_source=data_source,
        prompt=prompt,
        images=[image],
        ground_truth=ground_truth,
        extra_info=extra_info,
        ability=ability,
        where=where,
    )


def frame_extra_info(resolver: ImageResolver, coord_frame: str | None) -> dict[str, Any]:
    """What a row records about the frame it was built for (``extra_info``): the model's ``coord_frame`` and the
    ``min_pixels``/``max_pixels`` its images are resized with. The scorers use them unless the run overrides
    them, and refuse rows that contradict an explicit run setting (:func:`perception_r1.rewards.boxes.resolve_frame`).
    """
    out: dict[str, Any] = {} if coord_frame is None else {"coord_frame": coord_frame}
    for key in ("min_pixels", "max_pixels"):
        value = getattr(resolver, key)
        if value:
            out[key] = int(value)
    return out


def add_common_options(
    parser: argparse.ArgumentParser,
    image_root_help: str = "folder of relative image paths",
    coord_frame: str | None = None,
) -> None:
    """Options every perception builder shares (``coord_frame``: this builder's default model frame; ``None`` for
    a task without coordinates)."""
    parser.add_argument("--output", type=Path, required=True, help="parquet file to write (atomically)")
    parser.add_argument("--image-root", type=Path, default=None, help=image_root_help)
    images = parser.add_mutually_exclusive_group()
    images.add_argument(
        "--embed-images",
        dest="embed_images",
        action="store_true",
        default=True,
        help="store each image's bytes in the parquet (the default: every Ray node reads images from the data)",
    )
    images.add_argument(
        "--image-paths",
        dest="embed_images",
        action="store_false",
        help="store absolute image paths instead (smaller parquet; the paths must exist on every node)",
    )
    parser.add_argument("--min-pixels", type=int, default=None, help="per-image min_pixels for the Qwen resize")
    parser.add_argument("--max-pixels", type=int, default=None, help="per-image max_pixels for the Qwen resize")
    parser.add_argument(
        "--thinking", action="store_true", help="use the think/answer template (the paper's default: no thinking)"
    )
    parser.add_argument("--limit", type=int, default=None, help="keep at most this many rows")
    if coord_frame is not None:
        from ..rewards.boxes import COORD_FRAMES

        parser.add_argument(
            "--coord-frame",
            choices=COORD_FRAMES,
            default=coord_frame,
            help=f"the model's coordinate frame, recorded in extra_info.coord_frame (default {coord_frame}: the "
            "paper's model for this task; qwen2_5_vl for Qwen2.5-VL, with --min-pixels/--max-pixels)",
        )


def write_rows(rows: list[dict[str, Any]], output: str | os.PathLike[str]) -> int:
    """Number rows (``extra_info.index``: the prompt index curricula and rollouts refer to) and write atomically."""
    import pyarrow as pa

    for i, row in enumerate(rows):
        row["extra_info"]["index"] = i
    # The schema from every row (not the first batch): a field that is null early and set later keeps its type.
    return write_parquet_atomic(rows, output, schema=pa.Table.from_pylist(rows).schema)


def finish_rows(rows: list[dict[str, Any]], args: argparse.Namespace, what: str) -> int:
    """Write ``rows`` to ``args.output`` (``DataError`` when there are none) and log a one-line summary."""
    if not rows:
        raise DataError(f"no {what} to write (check the input and the --split filter)")
    write_rows(rows, args.output)
    logger.info("wrote %d %s -> %s", len(rows), what, args.output)
    return 0


# ---------------------------------------------------------------- launcher check: data built as the run expects


def check_launch_data(
    path: str | os.PathLike[str],
    thinking: bool,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> int:
    """Check a perception parquet against the run's settings; ``ValueError`` with one line when they disagree.

    - the prompts use the think/answer template exactly when the run scores with ``thinking``;
    - with ``min_pixels``/``max_pixels`` (the ``qwen2_5_vl`` frame, where coordinates are pixels of the resized
      image) every image entry carries the same limits, so verl resizes each image once, exactly as the scorer
      assumes (an entry without limits is resized twice and drifts by up to a patch).
    Returns the number of rows checked.
    """
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise ValueError(f"data file {path} does not exist (build it with `perception-r1 data ...`)")
    marker = THINKING_TEMPLATE.split("{prompt}")[1].strip()
    # Streamed in batches: with embedded images (the builders' default) the column holds every image's bytes.
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=64, columns=["prompt", "images"])
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise ValueError(f"data file {path} is not a readable parquet file ({exc})") from None
    rows = (
        pair
        for batch in batches
        for pair in zip(batch.column("prompt").to_pylist(), batch.column("images").to_pylist(), strict=True)
    )
    count = 0
    for i, (prompt, entries) in enumerate(rows):
        count += 1
        text = " ".join(str(m.get("content", "")) for m in prompt or [])
        if (marker in text) != thinking:
            want = "with" if thinking else "without"
            raise ValueError(
                f"{path} row {i}: field 'prompt': built {'with' if marker in text else 'without'} the thinking "
                f"template but the run scores {want} it (THINKING={int(thinking)}); rebuild with "
                f"{'--thinking' if thinking else 'no --thinking'} or set THINKING={int(not thinking)}"
            )
        for name, want_px in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
            if want_px is None:
                continue
            for j, entry in enumerate(entries or []):
                got = (entry or {}).get(name)
                if got != want_px:
                    raise ValueError(
                        f"{path} row {i}: field 'images[{j}].{name}': {got} but the run uses {want_px} "
                        f"(rebuild the data with --{name.replace('_', '-')} {want_px})"
                    )
    return count


def main(argv: list[str] | None = None) -> int:
    """``python -m perception_r1.data.perception_prompts --data F [--thinking 0|1] [--min-pixels N --max-pixels N]``."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m perception_r1.data.perception_prompts", description=main.__doc__)
    parser.add_argument("--data", action="append", default=[], help="perception parquet (repeat)")
    parser.add_argument("--thinking", type=int, choices=(0, 1), default=0)
    parser.add_argument("--min-pixels", type=int, default=None)
    parser.add_argument("--max-pixels", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        for path in args.data:
            check_launch_data(path, bool(args.thinking), args.min_pixels, args.max_pixels)
    except (ValueError, OSError) as exc:
        print(f"data check: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a missing/broken file: one line, the preflight explains the details
        print(f"data check: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
