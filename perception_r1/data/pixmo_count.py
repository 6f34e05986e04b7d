"""``perception-r1 data pixmo-count``: PixMo-Count (object points and counts) -> verl parquet.

Input is the hub layout of ``allenai/pixmo-count`` (``image_url``, ``image_sha256``, ``count``, ``points`` as
``{x, y}`` in pixels, ``label``), either straight from the hub (``--hub allenai/pixmo-count --hub-split train``,
needs the ``datasets`` package and network) or from a local ``.parquet`` / ``.jsonl`` / ``.json`` copy
(``--input``). The hub stores image URLs only: images are looked up in ``--image-root`` by their sha256
(``<sha256>.<ext>``), a local ``image`` path field, or the URL's file name; ``--download`` fetches missing ones
(sha256-checked, written atomically, resumable). Rows whose image cannot be had fail the build unless
``--skip-missing-images``.

Ground truth is the list of points ``[[x, y], ...]`` in original-image pixels (the count is its length) with
``extra_info.image_size = [w, h]`` (the ``pixmo_count`` scorer's contract). The validation and test splits carry
counts but no points: build them with ``--skip-missing-points`` off a split with points, or expect an error.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .common import DataError, iter_hub_records, read_records
from .perception_prompts import (
    ImageResolver,
    add_common_options,
    counting_prompt,
    finish_rows,
    frame_extra_info,
    make_row,
)

logger = logging.getLogger(__name__)
DATA_SOURCE = "pixmo_count"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def read_points(value: Any, where: str, field: str = "points") -> list[list[float]]:
    """Points from ``[{x, y}, ...]``, ``{"x": [...], "y": [...]}`` (HF ``sequence`` of structs) or ``[[x, y], ...]``."""
    if isinstance(value, Mapping) and "x" in value and "y" in value:
        xs, ys = list(value["x"]), list(value["y"])
        if len(xs) != len(ys):
            raise DataError(f"{where}: field {field!r}: {len(xs)} x values but {len(ys)} y values")
        items: list[Any] = [[x, y] for x, y in zip(xs, ys, strict=True)]
    elif isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = list(value)
    else:
        raise DataError(f"{where}: field {field!r}: expected a list of points, got {type(value).__name__}")
    points = []
    for i, item in enumerate(items):
        pair = [item.get("x"), item.get("y")] if isinstance(item, Mapping) else item
        try:
            x, y = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise DataError(f"{where}: field {field}[{i}]: expected a point {{x, y}} or [x, y], got {item!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DataError(f"{where}: field {field}[{i}]: non-finite point {item!r}")
        points.append([x, y])
    return points


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class PixmoImages:
    """Finds PixMo images under a root folder (by sha256 or URL file name) and downloads missing ones."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._by_stem: dict[str, Path] = {}
        if root is not None and root.is_dir():
            for path in root.iterdir():
                if path.is_file() and not path.name.startswith("."):
                    self._by_stem.setdefault(path.stem, path)
                    self._by_stem.setdefault(path.name, path)

    def find(self, row: Mapping[str, Any]) -> Path | None:
        image = row.get("image")
        if isinstance(image, str) and image:
            path = Path(image) if Path(image).is_absolute() or self.root is None else self.root / image
            return path.resolve() if path.is_file() else None
        sha = row.get("image_sha256")
        if sha and sha in self._by_stem:
            return self._by_stem[sha].resolve()
        url = row.get("image_url")
        if url:
            name = Path(urllib.parse.urlparse(str(url)).path).name
            if name in self._by_stem:
                return self._by_stem[name].resolve()
        return None

    def download(self, url: str, sha256: str | None, timeout_s: float = 30.0) -> Path | None:
        """Fetch ``url`` into the root as ``<sha256><ext>``; ``None`` (logged) on any failure or hash mismatch."""
        assert self.root is not None
        suffix = Path(urllib.parse.urlparse(url).path).suffix.lower()
        suffix = suffix if suffix in IMAGE_SUFFIXES else ".jpg"
        stem = sha256 or hashlib.sha256(url.encode()).hexdigest()
        target = self.root / f"{stem}{suffix}"
        if target.is_file():
            return target
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=self.root)
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "perception-r1 data builder"})
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout_s) as response:
                digest = hashlib.sha256()
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    digest.update(chunk)
                    out.write(chunk)
            if sha256 and digest.hexdigest() != sha256:
                logger.warning("sha256 mismatch for %s (the image changed upstream); skipped", url)
                os.unlink(tmp)
                return None
            os.replace(tmp, target)
        except Exception as exc:  # network errors of every kind: this image is skipped, the build goes on
            logger.debug("download failed for %s: %s", url, exc)
            if os.path.exists(tmp):
                os.unlink(tmp)
            return None
        self._by_stem[stem] = target
        return target

    def download_missing(self, rows: list[Mapping[str, Any]], workers: int = 16) -> int:
        """Download every row's missing image (threads, progress bar); returns how many failed."""
        from ..commands.common import progress

        if self.root is None:
            raise DataError("--download needs --image-root (where images are stored)")
        self.root.mkdir(parents=True, exist_ok=True)
        wanted = {}
        for row in rows:
            if self.find(row) is None and row.get("image_url"):
                wanted.setdefault(str(row["image_url"]), row.get("image_sha256"))
        failed = 0
        with progress(len(wanted), "downloading images", unit="img") as bar, ThreadPoolExecutor(workers) as pool:
            for result in pool.map(lambda item: self.download(*item), wanted.items()):
                failed += result is None
                bar.update(1)
        if failed:
            logger.warning("%d of %d images could not be downloaded", failed, len(wanted))
        return failed


def build_rows(
    records: Iterable[tuple[str, Mapping[str, Any]]],
    images: PixmoImages,
    resolver: ImageResolver,
    split: str,
    thinking: bool = False,
    skip_missing_points: bool = False,
    skip_missing_images: bool = False,
    limit: int | None = None,
    coord_frame: str = "qwen2_vl",
) -> list[dict[str, Any]]:
    """verl rows after checking label, points (inside the image) and count (equal to the number of points)."""
    rows: list[dict[str, Any]] = []
    frame_info = frame_extra_info(resolver, coord_frame)
    skipped = {"points": 0, "images": 0}
    for where, rec in records:
        label = rec.get("label")
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"{where}: field 'label': expected a non-empty object name, got {label!r}")
        count = rec.get("count")
        points = read_points(rec["points"], where) if rec.get("points") is not None else None
        if points is None or (not points and count):  # eval splits: a count without its points
            if skip_missing_points:
                skipped["points"] += 1
                continue
            raise DataError(f"{where}: field 'points': missing (eval splits have counts only; --skip-missing-points)")
        if count is not None and int(count) != len(points):
            raise DataError(f"{where}: field 'count': {count} but {len(points)} points")
        path = images.find(rec)
        if path is None:
            if skip_missing_images:
                skipped["images"] += 1
                continue
            raise DataError(
                f"{where}: field 'image_url': image not found under {images.root} "
                f"(sha256 {rec.get('image_sha256')!r}; use --download or --skip-missing-images)"
            )
        image, (w, h) = resolver.resolve(path, where)
        for i, (x, y) in enumerate(points):
            if not (-1.0 <= x <= w + 1.0 and -1.0 <= y <= h + 1.0):
                raise DataError(f"{where}: field points[{i}]: ({x}, {y}) lies outside the {w}x{h} image")
        gt = [[min(max(x, 0.0), float(w)), min(max(y, 0.0), float(h))] for x, y in points]
        extra = {"split": split, "image_size": [w, h], "label": label.strip(), "count": len(gt)}
        for key in ("image_url", "image_sha256"):
            extra[key] = str(rec[key]) if rec.get(key) else None
        extra.update(frame_info)
        rows.append(
            make_row(
                data_source=DATA_SOURCE,
                ability="counting",
                prompt=counting_prompt(label, thinking=thinking),
                image=image,
                ground_truth=gt,
                extra_info=extra,
            )
        )
        if limit is not None and len(rows) >= limit:
            break
    if skipped["points"] or skipped["images"]:
        logger.warning("skipped %d rows without points and %d without images", skipped["points"], skipped["images"])
    return rows


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pixmo-count",
        help="PixMo-Count counting rows (points and counts)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="local parquet / JSONL / JSON in the hub layout")
    source.add_argument("--hub", help="hub dataset name, e.g. allenai/pixmo-count (needs `datasets` and network)")
    parser.add_argument("--hub-split", default="train", help="hub split (default train)")
    parser.add_argument("--split", default=None, help="extra_info.split recorded in the rows (default: hub split)")
    parser.add_argument("--download", action="store_true", help="download missing images into --image-root")
    parser.add_argument("--skip-missing-images", action="store_true", help="drop rows whose image is unavailable")
    parser.add_argument("--skip-missing-points", action="store_true", help="drop rows without points (eval splits)")
    add_common_options(
        parser, image_root_help="folder of images named <sha256>.<ext> (or by URL file name)", coord_frame="qwen2_vl"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.hub:
        records: list[tuple[str, Any]] = list(iter_hub_records(args.hub, args.hub_split)[1])
    else:
        records = list(read_records(args.input))
    images = PixmoImages(args.image_root)
    if args.download:
        images.download_missing([rec for _, rec in records])
    resolver = ImageResolver.from_args(args)
    rows = build_rows(
        records,
        images,
        resolver,
        args.split or args.hub_split,
        args.thinking,
        args.skip_missing_points,
        args.skip_missing_images,
        args.limit,
        args.coord_frame,
    )
    return finish_rows(rows, args, what="counting rows")
