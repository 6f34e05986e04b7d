"""Building blocks for dataset builders that write verl parquet.

A builder reads records (JSONL / JSON / parquet files, or a Hugging Face Hub dataset), turns each into one verl
row and streams the rows into a parquet file that appears only when every record was good. The pieces:

- :class:`DataError` / :func:`field_error`: a bad record stops the build with a message naming the record
  (``file:line`` for JSON lines, ``file[i]`` for parquet/JSON lists/Hub rows, ``i`` counted from 0) and the field,
  and the CLI exits 2 without writing anything.
- :func:`read_records` / :func:`count_records` / :func:`iter_hub_records`: ``(where, record)`` pairs.
- :func:`load_image`: a file path, ``{"bytes"|"path"}`` dict, raw bytes or a PIL image -> checked encoded bytes.
- :func:`image_entry`, :func:`with_image_placeholders`, :func:`verl_row`: the row layout verl 0.9.1's
  ``RLHFDataset`` reads (``prompt`` messages whose ``<image>`` placeholders match ``images`` one to one; each
  image ``{"bytes": ...}`` plus optional ``min_pixels``/``max_pixels``, which ``qwen_vl_utils.fetch_image``
  applies when verl builds the vision inputs).
- :class:`AtomicParquetWriter`: streams rows to a temp file in batches and renames it into place on success.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CommandError
from ..jsonl import iter_jsonl

IMAGE_PLACEHOLDER = "<image>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class DataError(CommandError):
    """A bad input record or file: the message names where and which field; the CLI exits 2, writes nothing."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=2)


def field_error(where: str, field: str, problem: str) -> DataError:
    """``DataError("<where>: field '<field>': <problem>")``."""
    return DataError(f"{where}: field {field!r}: {problem}")


def describe(value: Any, limit: int = 80) -> str:
    """A short repr of a bad value for error messages (bytes and long text are abbreviated)."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------- reading records


def read_records(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` from a ``.jsonl``, ``.json`` (a list) or ``.parquet`` file.

    Parquet is read batch by batch (image bytes stay bytes); a bad line or non-object record is a
    :class:`DataError` naming it.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DataError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
        index = 0
        for batch in parquet.iter_batches(batch_size=256):
            for record in batch.to_pylist():
                yield f"{name}[{index}]", record
                index += 1
        return
    if suffix == ".jsonl":
        for number, record in iter_jsonl(path, DataError, name=name):
            yield f"{name}:{number}", record
        return
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, list):
            raise DataError(f"{name}: expected a JSON list of records, got {type(data).__name__}")
        for i, record in enumerate(data):
            if not isinstance(record, dict):
                raise DataError(f"{name}[{i}]: expected a JSON object, got {type(record).__name__}")
            yield f"{name}[{i}]", record
        return
    raise DataError(f"{path}: unsupported input format {suffix!r} (expected .jsonl, .json or .parquet)")


def count_records(path: str | os.PathLike[str]) -> int | None:
    """The number of records (for a progress bar total) when cheap to know, else ``None``."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if path.suffix.lower() == ".jsonl":
            with open(path, "rb") as handle:
                return sum(1 for line in handle if line.strip())
    except Exception:  # the reader reports the real problem with a proper message
        return None
    return None


def iter_hub_records(repo_id: str, split: str = "train") -> tuple[int, Iterator[tuple[str, dict[str, Any]]]]:
    """``(count, (where, record) iterator)`` for a Hugging Face Hub dataset split via ``datasets.load_dataset``.

    Image columns are cast to ``decode=False`` so records carry the original encoded bytes
    (``{"bytes", "path"}``) instead of decoded PIL images (no re-encoding, no quality loss).
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets comes with verl
        raise DataError("--from-hub needs the `datasets` package: pip install datasets") from exc
    try:
        dataset = datasets.load_dataset(repo_id, split=split)
    except Exception as exc:  # network, auth, unknown repo or split
        raise DataError(f"{repo_id}: cannot load split {split!r} from the Hugging Face Hub ({exc})") from None
    dataset = undecoded_images(dataset)
    label = f"{repo_id}:{split}"

    def records() -> Iterator[tuple[str, dict[str, Any]]]:
        for i, record in enumerate(dataset):
            yield f"{label}[{i}]", dict(record)

    return len(dataset), records()


def undecoded_images(dataset: Any) -> Any:
    """``dataset`` with every ``Image`` / list-of-``Image`` column cast to ``decode=False`` (``{"bytes", "path"}``)."""
    import datasets

    list_types = tuple(t for t in (getattr(datasets, "List", None), getattr(datasets, "Sequence", None)) if t)
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
            continue
        inner = feature[0] if isinstance(feature, list) and feature else getattr(feature, "feature", None)
        if (isinstance(feature, list) or isinstance(feature, list_types)) and isinstance(inner, datasets.Image):
            dataset = dataset.cast_column(column, datasets.List(datasets.Image(decode=False)))
    return dataset


# ----------------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class EncodedImage:
    """An image as stored in the parquet: its encoded bytes (PNG/JPEG/...) and real pixel size."""

    data: bytes
    width: int
    height: int
    format: str


def _check_encoded(data: bytes, where: str, field: str, origin: str) -> EncodedImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, fmt = int(image.width), int(image.height), str(image.format or "")
            image.verify()  # checks structure/CRCs without a full decode
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise field_error(where, field, f"cannot decode image {origin}: {exc}") from None
    if width < 1 or height < 1:
        raise field_error(where, field, f"image {origin} has no pixels ({width}x{height})")
    return EncodedImage(data, width, height, fmt)


def load_image(value: Any, where: str, field: str, base_dir: str | os.PathLike[str] | None = None) -> EncodedImage:
    """Resolve one image reference to checked encoded bytes.

    Accepts a file path (relative to ``base_dir``), ``file://`` URL, a ``{"bytes": ..., "path": ...}`` dict (the
    Hugging Face ``Image`` layout; bytes win, else the path), raw encoded bytes or a PIL image (encoded as PNG).
    Raises :class:`DataError` naming ``where`` and ``field`` when the file is missing or not an image.
    """
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if data:
            return _check_encoded(bytes(data), where, field, "bytes")
        if value.get("path"):
            return load_image(str(value["path"]), where, field, base_dir)
        if value.get("image"):
            return load_image(value["image"], where, field, base_dir)
        raise field_error(where, field, f"expected an image path or {{'bytes': ...}}, got {describe(value)}")
    if isinstance(value, (bytes, bytearray, memoryview)):
        if not value:
            raise field_error(where, field, "empty image bytes")
        return _check_encoded(bytes(value), where, field, "bytes")
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if not text.strip():
            raise field_error(where, field, "empty image path")
        if text.startswith("file://"):
            text = text[len("file://") :]
        path = Path(text).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise field_error(where, field, f"image file not found: {path}") from None
        except OSError as exc:
            raise field_error(where, field, f"cannot read image file {path}: {exc.strerror}") from None
        return _check_encoded(data, where, field, str(path))
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return EncodedImage(buffer.getvalue(), int(value.width), int(value.height), "PNG")
    raise field_error(where, field, f"expected an image path, bytes or {{'bytes': ...}}, got {describe(value)}")


def image_list(
    value: Any, where: str, field: str, base_dir: str | os.PathLike[str] | None = None
) -> list[EncodedImage]:
    """One image or a list of images -> checked encoded images (at least one)."""
    if value is None:
        raise field_error(where, field, "missing (expected an image or a list of images)")
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise field_error(where, field, "empty list (expected at least one image)")
    return [
        load_image(item, where, f"{field}[{i}]" if len(items) > 1 else field, base_dir) for i, item in enumerate(items)
    ]


def image_entry(image: EncodedImage, min_pixels: int | None = None, max_pixels: int | None = None) -> dict[str, Any]:
    """The parquet ``images`` item verl reads: ``{"bytes": ...}`` plus the Qwen resize bounds when given.

    verl's ``RLHFDataset`` turns ``{"bytes"}`` into a PIL image and passes the other keys to
    ``qwen_vl_utils.fetch_image``, which resizes within ``[min_pixels, max_pixels]``: the per-image way to set
    the paper's 3136 / 1806336 bounds for both the trainer and the rollout.
    """
    entry: dict[str, Any] = {"bytes": image.data}
    if min_pixels:
        entry["min_pixels"] = int(min_pixels)
    if max_pixels:
        entry["max_pixels"] = int(max_pixels)
    return entry


# -------------------------------------------------------------------------------------------------------- rows


def with_image_placeholders(text: str, n_images: int, where: str, field: str) -> str:
    """``text`` with exactly ``n_images`` ``<image>`` placeholders: kept when already right, prepended when absent."""
    found = text.count(IMAGE_PLACEHOLDER)
    if found == n_images:
        return text
    if found == 0:
        return IMAGE_PLACEHOLDER * n_images + text
    raise field_error(
        where, field, f"has {found} {IMAGE_PLACEHOLDER} placeholder(s) but the record has {n_images} image(s)"
    )


def user_prompt(text: str) -> list[dict[str, str]]:
    """The verl ``prompt`` column: one user turn (the chat template adds the model's default system turn)."""
    return [{"role": "user", "content": text}]


def verl_row(
    *,
    data_source: str,
    prompt: str,
    images: Sequence[dict[str, Any]],
    ground_truth: Any,
    extra_info: dict[str, Any],
    ability: str,
    where: str = "row",
) -> dict[str, Any]:
    """One verl parquet row; checks that the ``<image>`` placeholders match the images one to one."""
    if prompt.count(IMAGE_PLACEHOLDER) != len(images):
        raise field_error(
            where,
            "prompt",
            f"{prompt.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} placeholder(s) for {len(images)} image(s)",
        )
    return {
        "data_source": data_source,
        "prompt": user_prompt(prompt),
        "images": list(images),
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": extra_info,
    }


# ------------------------------------------------------------------------------------------------------ writing


class AtomicParquetWriter:
    """Stream rows into ``path`` in batches; the file appears (atomic rename) only when the block succeeds.

    >>> with AtomicParquetWriter("out.parquet") as sink:  # doctest: +SKIP
    ...     for row in rows:
    ...         sink.write(row)

    The schema is ``schema`` when given, else inferred from the first batch (later batches are cast to it), so a
    field's type must not change across rows. On an exception the temp file is removed and nothing is written;
    :class:`DataError` when no row was written.
    """

    def __init__(self, path: str | os.PathLike[str], schema: Any = None, batch_rows: int = 256) -> None:
        self.path = Path(path)
        self.schema = schema
        self.batch_rows = batch_rows
        self.rows_written = 0
        self._pending: list[dict[str, Any]] = []
        self._writer: Any = None
        self._tmp: str | None = None

    def __enter__(self) -> AtomicParquetWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        return self

    def write(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        if len(self._pending) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self._pending, schema=self.schema)
        if self._writer is None:
            self.schema = table.schema
            self._writer = pq.ParquetWriter(self._tmp, table.schema)
        self._writer.write_table(table)
        self.rows_written += len(self._pending)
        self._pending = []

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._flush()
                if self._writer is None:
                    raise DataError(f"{self.path}: no rows to write")
                self._writer.close()
                self._writer = None
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self._tmp, 0o666 & ~umask)  # type: ignore[arg-type]  # mkstemp files are private
                os.replace(self._tmp, self.path)  # type: ignore[arg-type]
                self._tmp = None
        finally:
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.close()
            if self._tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._tmp)


def write_parquet_atomic(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], schema: Any = None) -> int:
    """Write all ``rows`` to ``path`` atomically; returns the row count."""
    with AtomicParquetWriter(path, schema=schema) as sink:
        for row in rows:
            sink.write(row)
    return sink.rows_written
