"""``perception-r1 data pageocr``: page images with their text -> verl OCR parquet.

Input: a JSONL / JSON / parquet index with one page per record: ``image`` (path, relative to ``--image-root`` or
else to the index's folder) and the page text, either inline (``text``) or in a UTF-8 file (``text_file``, or a
``text`` value that names an existing ``.txt`` file beside the index, as in ``shared/data/ocr/pages.jsonl``).
``width``/``height``, when present, must match the image. Ground truth is the page text (the ``pageocr``
scorer normalizes whitespace), with ``extra_info.image_size = [w, h]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .common import DataError, read_records
from .perception_prompts import (
    ImageResolver,
    add_common_options,
    finish_rows,
    frame_extra_info,
    make_row,
    ocr_prompt,
)

DATA_SOURCE = "pageocr"


def read_text(rec: Mapping[str, Any], where: str, base: Path) -> str:
    """The page text: ``text_file``, a ``text`` naming an existing ``.txt`` file, or inline ``text``."""
    field = "text_file" if rec.get("text_file") else "text"
    value = rec.get(field)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {field!r}: expected the page text or a .txt file name, got {value!r}")
    candidate = Path(value) if Path(value).is_absolute() else base / value
    is_file_name = field == "text_file" or ("\n" not in value and value.endswith(".txt") and candidate.is_file())
    if not is_file_name:
        return value
    try:
        text = candidate.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{where}: field {field!r}: text file not found: {candidate}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: field {field!r}: cannot read {candidate} as UTF-8 ({exc})") from None
    if not text.strip():
        raise DataError(f"{where}: field {field!r}: {candidate} is empty")
    return text


def build_rows(
    records: Iterable[tuple[str, Mapping[str, Any]]],
    resolver: ImageResolver,
    base: Path,
    split: str,
    thinking: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """verl rows, one per page."""
    rows: list[dict[str, Any]] = []
    for where, rec in records:
        image_name = rec.get("image")
        if isinstance(image_name, Mapping):
            image_name = image_name.get("path")
        if not isinstance(image_name, str) or not image_name:
            raise DataError(f"{where}: field 'image': expected an image path, got {rec.get('image')!r}")
        text = read_text(rec, where, base)
        expected = None
        if rec.get("width") is not None and rec.get("height") is not None:
            expected = (int(rec["width"]), int(rec["height"]))
        image, (w, h) = resolver.resolve(image_name, where, expected_size=expected)
        extra: dict[str, Any] = {"split": split, "image_size": [w, h], "image_file": image_name}
        extra.update(frame_extra_info(resolver, None))  # no coordinates: the pixel limits only
        if rec.get("id") is not None:
            extra["page_id"] = str(rec["id"])
        rows.append(
            make_row(
                data_source=DATA_SOURCE,
                ability="ocr",
                prompt=ocr_prompt(thinking=thinking),
                image=image,
                ground_truth=text,
                extra_info=extra,
            )
        )
        if limit is not None and len(rows) >= limit:
            break
    return rows


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pageocr",
        help="page OCR rows (image + text)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", type=Path, required=True, help="pages index: JSONL / JSON / parquet")
    parser.add_argument("--split", default="train", help="extra_info.split recorded in the rows (default train)")
    add_common_options(parser, image_root_help="folder of relative image paths (default: the index's folder)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    base = args.input.resolve().parent
    resolver = ImageResolver.from_args(args, default_root=base)
    rows = build_rows(read_records(args.input), resolver, base, args.split, args.thinking, args.limit)
    return finish_rows(rows, args, what="OCR pages")
