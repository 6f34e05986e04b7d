"""Benchmark loaders: one module per benchmark, each turning its public layout into :class:`BenchmarkItem` rows.

``load_benchmark("mathvista", "path/to/testmini.json")`` reads local files (a file or the folder that holds it);
``load_benchmark("mathvista", hub=True)`` downloads the hub dataset (needs network and ``datasets``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import mathverse, mathvision, mathvista, mmmu, verl_parquet, wemath
from .base import (
    LETTERS,
    BenchmarkFormatError,
    BenchmarkItem,
    ImageRef,
    find_data_file,
    load_hub,
    read_records,
)

RowParser = Callable[[dict[str, Any], str, "Path | None", bool], BenchmarkItem]


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to find and parse one benchmark: local file patterns, the hub location, the row parser."""

    name: str
    title: str
    files: tuple[str, ...]
    hub: tuple[str, str | None, str] | None
    parse_row: RowParser
    all_files: bool = False  # read every file matching the first pattern that matches (MMMU: one per subject)
    kind: str = "reasoning"  # or "perception": verl parquet rows scored by perception_metrics


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("mathvista", "MathVista (testmini)", mathvista.FILES, mathvista.HUB, mathvista.parse_row),
        BenchmarkSpec("mathverse", "MathVerse (testmini)", mathverse.FILES, mathverse.HUB, mathverse.parse_row),
        BenchmarkSpec("wemath", "We-Math (testmini)", wemath.FILES, wemath.HUB, wemath.parse_row),
        BenchmarkSpec("mmmu", "MMMU (validation)", mmmu.FILES, mmmu.HUB, mmmu.parse_row, all_files=True),
        BenchmarkSpec("mmmu_pro", "MMMU-Pro", mmmu.PRO_FILES, mmmu.PRO_HUB, mmmu.parse_pro_row, all_files=True),
        BenchmarkSpec("mathvision", "MATH-Vision", mathvision.FILES, mathvision.HUB, mathvision.parse_row),
        *(
            BenchmarkSpec(name, title, verl_parquet.FILES, None, verl_parquet.make_parser(name), kind="perception")
            for name, title in (
                ("refcoco", "RefCOCO/RefCOCO+/RefCOCOg (verl parquet from `data refcoco`)"),
                ("pixmo_count", "PixMo-Count (verl parquet from `data pixmo-count`)"),
                ("pageocr", "PageOCR (verl parquet from `data pageocr`)"),
                ("coco_detection", "COCO detection (verl parquet from `data coco-detection`)"),
            )
        ),
    )
}
REASONING = tuple(name for name, spec in BENCHMARKS.items() if spec.kind == "reasoning")
PERCEPTION = tuple(name for name, spec in BENCHMARKS.items() if spec.kind == "perception")


def get_spec(name: str) -> BenchmarkSpec:
    """The spec for ``name``; ``KeyError`` listing the known benchmarks otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}") from None


def _local_files(spec: BenchmarkSpec, path: Path) -> list[Path]:
    if path.is_file() or not spec.all_files:
        return [find_data_file(path, spec.files)]
    if not path.is_dir():
        raise BenchmarkFormatError(f"{path}: no such file or directory")
    for pattern in spec.files:
        hits = sorted(p for p in path.glob(pattern) if p.is_file())
        if hits:
            return hits
    raise BenchmarkFormatError(f"{path}: no benchmark file found (looked for {', '.join(spec.files)})")


def load_benchmark(
    name: str,
    path: str | Path | None = None,
    *,
    image_root: str | Path | None = None,
    hub: bool = False,
    hub_config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    ids: Iterable[str] | None = None,
    require_images: bool = True,
) -> list[BenchmarkItem]:
    """Load benchmark ``name`` from ``path`` (file or folder) or from the hub.

    ``image_root`` resolves relative image paths (default: the data file's folder). ``require_images=False``
    accepts rows whose image is absent (answer-extraction tests, text-only runs). ``ids`` keeps only those
    items; ``limit`` keeps the first N. Raises :class:`BenchmarkFormatError` naming the row and field.
    """
    spec = get_spec(name)
    sources: list[tuple[str, Iterable[dict[str, Any]], Path | None]] = []
    if hub:
        if spec.hub is None:
            raise BenchmarkFormatError(
                f"{name}: no hub source; build its parquet with `perception-r1 data …` and pass it as the data path"
            )
        dataset, config, default_split = spec.hub
        configs = [hub_config or config]
        if name == "mmmu" and not (hub_config or config):
            configs = list(mmmu.SUBJECTS)
        for cfg in configs:
            label = f"{dataset}[{cfg or ''}]"
            root = Path(image_root) if image_root else None
            sources.append((label, load_hub(dataset, cfg, split or default_split), root))
    else:
        if path is None:
            raise BenchmarkFormatError(f"{name}: give a data path (file or folder) or use the hub")
        for file in _local_files(spec, Path(path)):
            root = Path(image_root) if image_root else file.parent
            sources.append((str(file), read_records(file), root))
    wanted = {str(i) for i in ids} if ids is not None else None
    items: list[BenchmarkItem] = []
    seen: dict[str, str] = {}
    for label, rows, root in sources:
        for index, row in enumerate(rows, start=1):
            where = f"{label} row {index}"
            if not isinstance(row, dict):
                raise BenchmarkFormatError(f"{where}: expected an object, got {type(row).__name__}")
            item = spec.parse_row(row, where, root, require_images)
            if item.id in seen:
                raise BenchmarkFormatError(f"{where}: duplicate id {item.id!r} (first at {seen[item.id]})")
            seen[item.id] = where
            if wanted is not None and item.id not in wanted:
                continue
            items.append(item)
            if limit is not None and len(items) >= limit:
                return items
    return items


__all__ = [
    "BENCHMARKS",
    "LETTERS",
    "BenchmarkFormatError",
    "BenchmarkItem",
    "BenchmarkSpec",
    "PERCEPTION",
    "REASONING",
    "ImageRef",
    "get_spec",
    "load_benchmark",
]
