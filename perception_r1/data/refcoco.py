"""``perception-r1 data refcoco``: RefCOCO / RefCOCO+ / RefCOCOg referring expressions -> verl parquet.

Two input layouts:

- **refer** (the ``lichengunc/refer`` release): a folder with ``refs(unc).p`` / ``refs(google).p`` / ``refs(umd).p``
  (a pickle list of refs: ``ref_id``, ``ann_id``, ``image_id``, ``split``, ``sentences[{sent}]``) and
  ``instances.json`` (COCO images and annotations; boxes ``[x, y, w, h]``). Pick it with ``--refer-dir`` and
  ``--split-by`` (``unc`` for RefCOCO/RefCOCO+, ``umd`` or ``google`` for RefCOCOg).
- **records** (Hugging Face / JSON exports): a ``.json`` list, ``.jsonl`` or ``.parquet`` file with one row per
  expression or per ref: an image file name (``image``/``file_name``/``image_path``), a box (``bbox``/``solution``;
  ``--bbox-format xywh|xyxy``) and the expression(s) (``sentences`` as strings or ``{sent}`` objects, or one of
  ``expression``/``referring_expression``/``sent``/``normal_caption``/``caption``; ``--text-field``,
  ``--image-field``, ``--bbox-field`` pin the names).

One row per (ref, sentence) by default (``--sentences first`` keeps one per ref). Ground truth is the box as
``[x1, y1, x2, y2]`` in original-image pixels with ``extra_info.image_size = [w, h]`` (the ``refcoco`` scorer's
contract). Bad records fail with the record and field named; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import DataError, read_records
from .perception_prompts import (
    ImageResolver,
    add_common_options,
    finish_rows,
    frame_extra_info,
    grounding_prompt,
    make_row,
)

DATA_SOURCE = "refcoco"
TEXT_FIELDS = ("expression", "referring_expression", "sent", "normal_caption", "caption")
IMAGE_FIELDS = ("image", "file_name", "image_path", "img_path")
BOX_FIELDS = ("bbox", "solution", "box")


@dataclass(frozen=True)
class RefRecord:
    """One referring expression with its box in original pixels (xyxy)."""

    where: str
    image: str
    box: list[float]
    expression: str
    ids: dict[str, Any]
    image_size: tuple[int, int] | None = None


def xywh_to_xyxy(box: Iterable[Any], where: str, field: str = "bbox") -> list[float]:
    """``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``; ``DataError`` naming the field on a malformed box."""
    x, y, w, h = _four_numbers(box, where, field)
    return [x, y, x + w, y + h]


def _four_numbers(box: Any, where: str, field: str) -> list[float]:
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise DataError(f"{where}: field {field!r}: expected 4 numbers, got {box!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise DataError(f"{where}: field {field!r}: expected 4 finite numbers, got {box!r}")
    return values


def _sentences(value: Any, where: str, field: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) and not hasattr(value, "tolist"):
        raise DataError(f"{where}: field {field!r}: expected a list of sentences, got {type(value).__name__}")
    out = []
    for i, item in enumerate(list(value)):
        text = item.get("sent") or item.get("raw") if isinstance(item, Mapping) else item
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field {field}[{i}]: expected a non-empty sentence, got {item!r}")
        out.append(" ".join(text.split()))
    if not out:
        raise DataError(f"{where}: field {field!r}: no sentences")
    return out


# ---------------------------------------------------------------- refer layout


def load_refs_pickle(path: Path) -> list[dict[str, Any]]:
    """The refs list of a ``refs(<split_by>).p`` file (pickled under Python 2 by the original release).

    Only load pickles you trust: unpickling can run code.
    """
    try:
        with open(path, "rb") as handle:
            try:
                refs = pickle.load(handle)
            except UnicodeDecodeError:  # Python-2 str with non-ASCII bytes
                handle.seek(0)
                refs = pickle.load(handle, encoding="latin1")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise DataError(f"{path}: not a refer refs pickle ({exc})") from None
    if not isinstance(refs, list):
        raise DataError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def iter_refer(refer_dir: Path, split_by: str, split: str | None) -> Iterator[RefRecord]:
    """Records of the refer layout, boxes from ``instances.json`` annotations (xywh -> xyxy)."""
    refs_path = refer_dir / f"refs({split_by}).p"
    inst_path = refer_dir / "instances.json"
    if not refs_path.is_file():
        found = sorted(p.name for p in refer_dir.glob("refs(*).p")) if refer_dir.is_dir() else []
        raise DataError(f"{refs_path}: not found (refs files in {refer_dir}: {found or 'none'})")
    try:
        instances = json.loads(inst_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read {inst_path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{inst_path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    images = {img["id"]: img for img in instances.get("images", [])}
    anns = {ann["id"]: ann for ann in instances.get("annotations", [])}
    for i, ref in enumerate(load_refs_pickle(refs_path)):
        where = f"{refs_path.name}[{i}]"
        if not isinstance(ref, Mapping):
            raise DataError(f"{where}: expected a ref object, got {type(ref).__name__}")
        if split is not None and ref.get("split") != split:
            continue
        for field in ("ann_id", "image_id", "sentences"):
            if field not in ref:
                raise DataError(f"{where}: missing field {field!r}")
        ann = anns.get(ref["ann_id"])
        if ann is None:
            raise DataError(f"{where}: field 'ann_id': {ref['ann_id']!r} is not an annotation in {inst_path.name}")
        image = images.get(ref["image_id"])
        if image is None:
            raise DataError(f"{where}: field 'image_id': {ref['image_id']!r} is not an image in {inst_path.name}")
        box = xywh_to_xyxy(ann.get("bbox"), f"{where} (annotation {ann['id']})")
        size = (int(image["width"]), int(image["height"])) if "width" in image and "height" in image else None
        ids = {"ref_id": ref.get("ref_id"), "ann_id": ref["ann_id"], "image_id": ref["image_id"]}
        for j, sent in enumerate(_sentences(ref["sentences"], where, "sentences")):
            yield RefRecord(where, str(image["file_name"]), box, sent, {**ids, "sent_index": j}, size)


# ---------------------------------------------------------------- record exports


def _first(row: Mapping[str, Any], fields: tuple[str, ...]) -> tuple[str | None, Any]:
    for field in fields:
        value = row.get(field)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return field, value
    return None, None


def iter_records(
    path: Path,
    bbox_format: str,
    split: str | None,
    text_field: str | None = None,
    image_field: str | None = None,
    bbox_field: str | None = None,
) -> Iterator[RefRecord]:
    """Records of a JSON / JSONL / parquet export (see the module docstring; ``*_field`` pin the field names)."""
    text_fields = (text_field,) if text_field else ("sentences", *TEXT_FIELDS)
    image_fields = (image_field,) if image_field else IMAGE_FIELDS
    box_fields = (bbox_field,) if bbox_field else BOX_FIELDS
    for where, row in read_records(path):
        if split is not None and row.get("split") is not None and row.get("split") != split:
            continue
        found_image_field, image = _first(row, image_fields)
        if image is None:
            raise DataError(f"{where}: missing field: one of {list(image_fields)} (the image file)")
        if isinstance(image, Mapping):
            image = image.get("path") or image.get("file_name")
            if not image:
                raise DataError(
                    f"{where}: field {found_image_field!r}: expected a file name or {{'path': ...}} "
                    "(exports with embedded image bytes: extract the images into --image-root first)"
                )
        box_field, box = _first(row, box_fields)
        if box is None:
            raise DataError(f"{where}: missing field: one of {list(box_fields)} (the box)")
        if isinstance(box, str):
            try:
                box = json.loads(box)
            except json.JSONDecodeError:
                raise DataError(f"{where}: field {box_field!r}: expected 4 numbers, got {box!r}") from None
        if bbox_format == "xywh":
            xyxy = xywh_to_xyxy(box, where, box_field or "bbox")
        else:
            xyxy = _four_numbers(box, where, box_field or "bbox")
        found_text_field, text = _first(row, text_fields)
        if text is None:
            raise DataError(f"{where}: missing field: one of {list(text_fields)} (the referring expression)")
        sentences = _sentences(text, where, found_text_field or "sentences")
        size = None
        if row.get("width") is not None and row.get("height") is not None:
            size = (int(row["width"]), int(row["height"]))
        ids = {k: row.get(k) for k in ("ref_id", "ann_id", "image_id")}
        for j, sent in enumerate(sentences):
            yield RefRecord(where, str(image), xyxy, sent, {**_plain(ids), "sent_index": j}, size)


def _plain(ids: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in ids.items()}


# ---------------------------------------------------------------- rows


def build_rows(
    records: Iterable[RefRecord],
    resolver: ImageResolver,
    split: str,
    sentences: str = "all",
    thinking: bool = False,
    limit: int | None = None,
    coord_frame: str = "qwen2_vl",
) -> list[dict[str, Any]]:
    """verl rows (one per expression) after checking each box lies inside its image with positive area."""
    rows: list[dict[str, Any]] = []
    frame_info = frame_extra_info(resolver, coord_frame)
    for rec in records:
        if sentences == "first" and rec.ids.get("sent_index", 0) != 0:
            continue
        image, (w, h) = resolver.resolve(rec.image, rec.where, expected_size=rec.image_size)
        x1, y1, x2, y2 = rec.box
        if not (x2 > x1 and y2 > y1):
            raise DataError(f"{rec.where}: field 'bbox': zero or negative area box {rec.box}")
        tol = 1.0  # COCO boxes may overhang the border by rounding
        if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
            raise DataError(f"{rec.where}: field 'bbox': box {rec.box} lies outside the {w}x{h} image {rec.image}")
        box = [max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)]
        rows.append(
            make_row(
                data_source=DATA_SOURCE,
                ability="grounding",
                prompt=grounding_prompt(rec.expression, thinking=thinking),
                image=image,
                ground_truth=box,
                extra_info={
                    "split": split,
                    "image_size": [w, h],
                    "question": rec.expression,
                    "image_file": rec.image,
                    **rec.ids,
                    **frame_info,
                },
            )
        )
        if limit is not None and len(rows) >= limit:
            break
    return rows


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "refcoco",
        help="RefCOCO/RefCOCO+/RefCOCOg grounding rows (refer pickles or JSON/parquet exports)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--refer-dir", type=Path, help="folder with refs(<split_by>).p and instances.json")
    source.add_argument("--input", type=Path, help="JSON / JSONL / parquet export with image, bbox, sentences")
    parser.add_argument("--split-by", default="unc", help="refs(<split_by>).p: unc, google or umd (default unc)")
    parser.add_argument("--split", default=None, help="keep only refs of this split (train, val, testA, ...)")
    parser.add_argument(
        "--bbox-format", choices=("xywh", "xyxy"), default="xywh", help="box layout of --input (default xywh)"
    )
    parser.add_argument("--text-field", default=None, help="--input: the expression field (default: auto)")
    parser.add_argument("--image-field", default=None, help="--input: the image file field (default: auto)")
    parser.add_argument("--bbox-field", default=None, help="--input: the box field (default: auto)")
    parser.add_argument("--sentences", choices=("all", "first"), default="all", help="rows per ref (default all)")
    add_common_options(parser, coord_frame="qwen2_vl")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    split = args.split or "train"
    if args.refer_dir is not None:
        records: Iterable[RefRecord] = iter_refer(args.refer_dir, args.split_by, args.split)
    else:
        records = iter_records(
            args.input, args.bbox_format, args.split, args.text_field, args.image_field, args.bbox_field
        )
    resolver = ImageResolver.from_args(args)
    rows = build_rows(records, resolver, split, args.sentences, args.thinking, args.limit, args.coord_frame)
    return finish_rows(rows, args, what="grounding rows")
