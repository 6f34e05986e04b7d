"""``perception-r1 data coco-detection``: a COCO instances JSON -> verl detection parquet (one row per image).

The prompt lists every category of the file in id order (for COCO: the 80 official names), as in the paper's
"Please output bbox coordinates and names of {categories}." Ground truth is the image's objects as
``[{"bbox": [x1, y1, x2, y2], "label": name}, ...]`` in original-image pixels (COCO's ``[x, y, w, h]`` converted),
with ``extra_info.image_size = [w, h]`` (the ``coco_detection`` scorer's contract).

Crowd annotations are left out (``--keep-crowd`` keeps them); degenerate boxes (zero width or height) are dropped
and counted; a malformed box, an unknown category, a box outside its image or a size that disagrees with the
image file is an error naming the annotation and field. Images without objects are skipped (``--keep-empty``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import DataError
from .perception_prompts import (
    ImageResolver,
    add_common_options,
    detection_prompt,
    finish_rows,
    frame_extra_info,
    make_row,
)

logger = logging.getLogger(__name__)
DATA_SOURCE = "coco_detection"
DEFAULT_FRAME = "qwen2_5_vl"  # the paper trains detection on Qwen2.5-VL-3B (pixels of the resized image)


def load_instances(path: Path) -> dict[str, Any]:
    """The parsed instances JSON with its three lists checked."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO instances object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: field {key!r}: expected a list (a COCO instances file)")
    return data


def category_names(categories: list[Any], where: str) -> dict[int, str]:
    """``{category_id: name}`` in id order; ``DataError`` on a malformed or duplicate category."""
    names: dict[int, str] = {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, Mapping) or not isinstance(cat.get("name"), str) or "id" not in cat:
            raise DataError(f"{where}: categories[{i}]: expected {{'id', 'name'}}, got {cat!r}")
        if cat["id"] in names:
            raise DataError(f"{where}: categories[{i}]: field 'id': duplicate category id {cat['id']}")
        names[int(cat["id"])] = " ".join(cat["name"].split())
    if not names:
        raise DataError(f"{where}: field 'categories': empty")
    return dict(sorted(names.items()))


def convert_box(bbox: Any, where: str, size: tuple[int, int]) -> list[float] | None:
    """COCO ``[x, y, w, h]`` -> clipped ``[x1, y1, x2, y2]``; ``None`` for a degenerate box; ``DataError`` if bad."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field 'bbox': expected [x, y, w, h] numbers, got {bbox!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise DataError(f"{where}: field 'bbox': non-finite number in {bbox!r}")
    if w <= 0 or h <= 0:
        return None
    width, height = size
    tol = 1.0
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise DataError(f"{where}: field 'bbox': {bbox!r} lies outside the {width}x{height} image")
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + w), min(float(height), y + h)
    return [x1, y1, x2, y2] if x2 > x1 and y2 > y1 else None


def build_rows(
    data: Mapping[str, Any],
    resolver: ImageResolver,
    split: str,
    where: str = "instances.json",
    thinking: bool = False,
    keep_crowd: bool = False,
    keep_empty: bool = False,
    max_objects: int | None = None,
    limit: int | None = None,
    coord_frame: str = DEFAULT_FRAME,
) -> list[dict[str, Any]]:
    """verl rows, one per image, in image-id order (``extra_info`` records ``coord_frame`` and the pixel limits)."""
    names = category_names(data["categories"], where)
    frame_info = frame_extra_info(resolver, coord_frame)
    prompt = detection_prompt(list(names.values()), thinking=thinking)
    by_image: dict[Any, list[tuple[int, Mapping[str, Any]]]] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, Mapping):
            raise DataError(f"{where}: annotations[{i}]: expected an object, got {type(ann).__name__}")
        for field in ("image_id", "category_id", "bbox"):
            if field not in ann:
                raise DataError(f"{where}: annotations[{i}]: missing field {field!r}")
        by_image[ann["image_id"]].append((i, ann))
    image_ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, Mapping) or "id" not in img or "file_name" not in img:
            raise DataError(f"{where}: images[{i}]: expected {{'id', 'file_name', 'width', 'height'}}")
        image_ids.add(img["id"])
    orphans = set(by_image) - image_ids
    if orphans:
        raise DataError(f"{where}: annotations: field 'image_id': {sorted(orphans)[:5]} not in images")

    rows: list[dict[str, Any]] = []
    dropped = {"crowd": 0, "degenerate": 0, "empty": 0, "too_many": 0}
    for i, img in sorted(enumerate(data["images"]), key=lambda item: item[1]["id"]):
        img_where = f"{where}: images[{i}] (id {img['id']})"
        expected = (int(img["width"]), int(img["height"])) if "width" in img and "height" in img else None
        image, size = resolver.resolve(img["file_name"], img_where, expected_size=expected, field="file_name")
        objects = []
        for j, ann in by_image.get(img["id"], []):
            ann_where = f"{where}: annotations[{j}] (id {ann.get('id')})"
            if ann.get("iscrowd") and not keep_crowd:
                dropped["crowd"] += 1
                continue
            name = names.get(ann["category_id"])
            if name is None:
                raise DataError(f"{ann_where}: field 'category_id': {ann['category_id']!r} is not a category")
            box = convert_box(ann["bbox"], ann_where, size)
            if box is None:
                dropped["degenerate"] += 1
                continue
            objects.append({"bbox": box, "label": name})
        if not objects and not keep_empty:
            dropped["empty"] += 1
            continue
        if max_objects is not None and len(objects) > max_objects:
            dropped["too_many"] += 1
            continue
        rows.append(
            make_row(
                data_source=DATA_SOURCE,
                ability="detection",
                prompt=prompt,
                image=image,
                ground_truth=objects,
                extra_info={
                    "split": split,
                    "image_size": list(size),
                    "image_id": img["id"],
                    "image_file": str(img["file_name"]),
                    "num_objects": len(objects),
                    **frame_info,
                },
            )
        )
        if limit is not None and len(rows) >= limit:
            break
    if any(dropped.values()):
        logger.info(
            "left out: %(crowd)d crowd and %(degenerate)d degenerate boxes, %(empty)d images without objects, "
            "%(too_many)d images over --max-objects",
            dropped,
        )
    return rows


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "coco-detection",
        help="COCO detection rows from an instances JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON")
    parser.add_argument("--split", default="train", help="extra_info.split recorded in the rows (default train)")
    parser.add_argument("--keep-crowd", action="store_true", help="keep iscrowd annotations")
    parser.add_argument("--keep-empty", action="store_true", help="keep images without objects")
    parser.add_argument("--max-objects", type=int, default=None, help="skip images with more objects than this")
    add_common_options(
        parser,
        image_root_help="folder of the images' file_name (default: <annotations dir>/images)",
        coord_frame=DEFAULT_FRAME,
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = load_instances(args.annotations)
    resolver = ImageResolver.from_args(args, default_root=args.annotations.resolve().parent / "images")
    rows = build_rows(
        data,
        resolver,
        args.split,
        where=args.annotations.name,
        thinking=args.thinking,
        keep_crowd=args.keep_crowd,
        keep_empty=args.keep_empty,
        max_objects=args.max_objects,
        limit=args.limit,
        coord_frame=args.coord_frame,
    )
    return finish_rows(rows, args, what="detection rows")
