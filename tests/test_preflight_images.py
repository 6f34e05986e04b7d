"""Perception parquets embed image bytes by default, and the preflight opens every image the way verl reads it.

verl 0.9.1's ``process_image`` takes ``{"bytes": ...}`` or ``{"image": path}``; a missing path is not an error in
verl: its prompt-length filter prints a traceback and silently drops the row. So the launchers' preflight opens
every image (embedded bytes decode, paths are absolute files that decode) and fails with one line naming the row.
Builders run on the real COCO images and OCR pages of ``shared/data``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_launcher_geo3k import at_least_rows
from test_launchers_perception import build_perception_data
from test_launchers_perception import launcher_env as perception_env
from test_launchers_perception import run_launcher as run_perception

from perception_r1.cli import main
from perception_r1.verl_plugin import preflight
from perception_r1.verl_plugin.preflight import PreflightError


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    return build_perception_data(shared_data, tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def by_path(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, Path]:
    """A detection parquet built with --image-paths over a private copy of the COCO images."""
    tmp = tmp_path_factory.mktemp("by_path")
    images = tmp / "images"
    shutil.copytree(shared_data / "coco" / "images", images)
    out = tmp / "coco_paths.parquet"
    argv = ["data", "coco-detection", "--annotations", str(shared_data / "coco" / "instances.json"),
            "--image-root", str(images), "--image-paths", "--min-pixels", "3136", "--max-pixels", "1003520",
            "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out, images


@pytest.mark.parametrize("name", ["refcoco", "pixmo", "ocr", "coco"])
def test_builders_embed_image_bytes_by_default(built, name):
    item = pq.read_schema(built[name]).field("images").type.value_type
    assert "bytes" in [item.field(i).name for i in range(item.num_fields)]
    assert "image" not in [item.field(i).name for i in range(item.num_fields)]  # verl refuses entries with both
    counts = preflight.check_images(built[name])
    assert counts["embedded"] == pq.ParquetFile(built[name]).metadata.num_rows and counts["files"] == 0


def test_image_paths_option_stores_absolute_paths(by_path):
    path, images = by_path
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        (entry,) = row["images"]
        assert Path(entry["image"]).is_absolute() and Path(entry["image"]).parent == images.resolve()
    assert preflight.check_images(path) == {"embedded": 0, "files": len(rows), "urls": 0}


def test_missing_image_file_fails_the_launch_with_one_line(by_path, tmp_path):
    path, images = by_path
    rows = pq.read_table(path).to_pylist()
    victim = Path(rows[3]["images"][0]["image"])
    backup = tmp_path / victim.name
    shutil.move(victim, backup)
    try:
        with pytest.raises(PreflightError, match=r"row 3: field 'images\[0\]\.image': image file not found: " + re.escape(str(victim))):
            preflight.check_images(path)
        env = perception_env(tmp_path, TRAIN_FILE=str(at_least_rows(path)), VAL_FILE=str(path))
        proc = run_perception("coco", env)
        assert proc.returncode != 0 and proc.stdout == "" and "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("preflight: error:")]
        assert len(errors) == 1 and "image file not found" in errors[0] and str(victim) in errors[0]
        # the node check (decode=False) still checks paths: they must exist on every node
        with pytest.raises(PreflightError, match="image file not found"):
            preflight.check_images(path, decode=False)
    finally:
        shutil.move(backup, victim)


def _write_images(path: Path, entries: list[list[dict]]) -> Path:
    pq.write_table(pa.table({"images": entries}), path)
    return path


def test_bad_entries_name_the_row_and_field(by_path, tmp_path):
    path, images = by_path
    good = str(next(images.iterdir()).resolve())
    relative = _write_images(tmp_path / "rel.parquet", [[{"image": good}], [{"image": "images/x.jpg"}]])
    with pytest.raises(PreflightError, match=r"row 1: field 'images\[0\]\.image': relative path 'images/x.jpg'"):
        preflight.check_images(relative)
    garbage = _write_images(tmp_path / "garbage.parquet", [[{"bytes": Path(good).read_bytes()}], [{"bytes": b"not an image"}]])
    with pytest.raises(PreflightError, match=r"row 1: field 'images\[0\]\.bytes': not a decodable image"):
        preflight.check_images(garbage)
    assert preflight.check_images(garbage, decode=False) == {"embedded": 0, "files": 0, "urls": 0}  # bytes travel
    empty = _write_images(tmp_path / "empty.parquet", [[{"bytes": b""}]])
    with pytest.raises(PreflightError, match=r"row 0: field 'images\[0\]\.bytes': empty"):
        preflight.check_images(empty)
    both = _write_images(tmp_path / "both.parquet", [[{"bytes": Path(good).read_bytes(), "image": None}]])
    with pytest.raises(PreflightError, match="both 'bytes' and 'image' fields"):
        preflight.check_images(both)
    not_image = tmp_path / "text.jpg"
    not_image.write_text("hello")
    fake = _write_images(tmp_path / "fake.parquet", [[{"image": str(not_image)}]])
    with pytest.raises(PreflightError, match="is not a decodable image"):
        preflight.check_images(fake)
    urls = _write_images(tmp_path / "urls.parquet", [[{"image": "https://example.org/a.jpg"}], [{"image": f"file://{good}"}]])
    assert preflight.check_images(urls) == {"embedded": 0, "files": 1, "urls": 1}
    strings = tmp_path / "strings.parquet"
    pq.write_table(pa.table({"images": [[good]]}), strings)
    with pytest.raises(PreflightError, match="must hold"):
        preflight.check_images(strings)
