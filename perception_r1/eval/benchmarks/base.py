"""The benchmark item every loader produces, and the helpers loaders share (file formats, images, errors).

A loader turns one benchmark's public layout (the official JSON/JSONL, a Hugging Face parquet export, or the hub
dataset itself) into :class:`BenchmarkItem` rows: one prompt, its images, the gold answer in a normalised form,
and the metadata its official scoring needs. Bad rows raise :class:`BenchmarkFormatError` naming the row and field.
"""

from __future__ import annotations

import ast
import io
import json
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...jsonl import iter_jsonl

AnswerType = Literal["choice", "integer", "float", "number", "text", "list", "expression"]
LETTERS = string.ascii_uppercase


class BenchmarkFormatError(ValueError):
    """A benchmark file or row does not have the expected shape (the message names the row and field)."""


@dataclass(frozen=True)
class ImageRef:
    """An image as a file path or as encoded bytes (hub rows carry bytes)."""

    path: str | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        """The encoded image bytes."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return Path(self.path).read_bytes()

    def mime(self) -> str:
        """The MIME type from the file name or the magic bytes (PNG when unknown)."""
        head = self.data[:12] if self.data is not None else b""
        name = (self.path or "").lower()
        if name.endswith((".jpg", ".jpeg")) or head.startswith(b"\xff\xd8"):
            return "image/jpeg"
        if name.endswith(".gif") or head.startswith(b"GIF8"):
            return "image/gif"
        if name.endswith(".webp") or head[8:12] == b"WEBP":
            return "image/webp"
        return "image/png"


@dataclass
class BenchmarkItem:
    """One benchmark question, ready for inference and scoring.

    - ``prompt``: the question text sent to the model (choices included), before the run's prompt template.
    - ``answer``: the gold answer; for ``answer_type == "choice"`` always the option letter (``"A"``…).
    - ``choices``: option texts in letter order (``None`` for free-form questions).
    - ``precision``/``unit``: as the benchmark defines them (MathVista floats are compared after rounding).
    - ``meta``: what the official scoring and breakdowns need (We-Math group and step, categories…).
    """

    id: str
    benchmark: str
    prompt: str
    answer: str
    answer_type: AnswerType
    images: list[ImageRef] = field(default_factory=list)
    choices: list[str] | None = None
    precision: int | None = None
    unit: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def letters(self) -> list[str]:
        """The option letters of a choice question (``[]`` otherwise)."""
        return list(LETTERS[: len(self.choices)]) if self.choices else []


# ------------------------------------------------------------------ file layouts


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows from a ``.json`` (a list, or a dict keyed by id), ``.jsonl`` or ``.parquet`` file.

    A dict keyed by id (MathVista's ``testmini.json``) keeps its key under ``"_key"``.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        return [row for _, row in iter_jsonl(path, BenchmarkFormatError, require_object=False)]
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BenchmarkFormatError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict):
            rows = []
            for key, value in data.items():
                if not isinstance(value, dict):
                    raise BenchmarkFormatError(f"{path}: entry {key!r} is {type(value).__name__}, expected an object")
                rows.append({"_key": key, **value})
            return rows
        if isinstance(data, list):
            return data
        raise BenchmarkFormatError(f"{path}: expected a JSON list or object, got {type(data).__name__}")
    raise BenchmarkFormatError(f"{path}: unsupported file type {suffix!r} (expected .json, .jsonl or .parquet)")


def find_data_file(path: str | Path, candidates: Iterable[str]) -> Path:
    """``path`` itself when it is a file, else the first of ``candidates`` found inside the directory."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in candidates:
            hits = sorted(path.glob(name))
            if hits:
                return hits[0]
        raise BenchmarkFormatError(f"{path}: no benchmark file found (looked for {', '.join(candidates)})")
    raise BenchmarkFormatError(f"{path}: no such file or directory")


def require(row: Mapping[str, Any], key: str, where: str) -> Any:
    """``row[key]``; :class:`BenchmarkFormatError` naming the row and the missing field otherwise."""
    if key not in row or row[key] is None:
        raise BenchmarkFormatError(f"{where}: missing field {key!r}")
    return row[key]


def image_ref(value: Any, root: Path | None, where: str, field_name: str) -> ImageRef | None:
    """An :class:`ImageRef` from a path string, a ``{"bytes", "path"}`` dict (parquet) or a PIL image (hub)."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return ImageRef(data=bytes(value["bytes"]))
        value = value.get("path") or value.get("image")  # {"image": path}: verl rows from the data builders
        if not value:
            return None
    if isinstance(value, (bytes, bytearray)):
        return ImageRef(data=bytes(value))
    if hasattr(value, "save"):  # a PIL image from `datasets`
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return ImageRef(data=buffer.getvalue())
    if not isinstance(value, str):
        raise BenchmarkFormatError(f"{where}: field {field_name!r} must be an image path, got {type(value).__name__}")
    path = Path(value)
    if not path.is_absolute() and root is not None:
        path = root / path
    if not path.is_file():
        raise BenchmarkFormatError(
            f"{where}: field {field_name!r}: image {str(path)!r} not found (pass --image-root to point at the images)"
        )
    return ImageRef(path=str(path))


def parse_options(value: Any, where: str, field_name: str) -> list[str]:
    """Options as a list of strings: a list, or MMMU's string form ``"['a', 'b']"``."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise BenchmarkFormatError(f"{where}: field {field_name!r} is not a list: {text[:80]!r}") from None
    if not isinstance(value, (list, tuple)):
        raise BenchmarkFormatError(f"{where}: field {field_name!r} must be a list, got {type(value).__name__}")
    return [str(v) for v in value]


def format_choices(choices: list[str], style: str = "({letter}) {text}") -> str:
    """``(A) x\\n(B) y``: options laid out one per line with their letters."""
    return "\n".join(style.format(letter=LETTERS[i], text=text) for i, text in enumerate(choices))


def letter_for(answer: str, choices: list[str], where: str) -> str:
    """The letter of ``answer`` among ``choices`` (``answer`` may be the letter itself or the option text)."""
    text = str(answer).strip()
    letters = LETTERS[: len(choices)]
    stripped = text.strip("()").upper()
    if len(stripped) == 1 and stripped in letters:
        return stripped
    if text in choices:
        return letters[choices.index(text)]
    raise BenchmarkFormatError(f"{where}: field 'answer' {text!r} is neither an option letter nor an option text")


def load_hub(dataset: str, config: str | None, split: str) -> Iterator[dict[str, Any]]:
    """Rows of a Hugging Face hub dataset (needs network and the ``datasets`` package)."""
    try:
        import datasets
    except ImportError:
        raise BenchmarkFormatError("hub download needs the `datasets` package: pip install datasets") from None
    try:
        data = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # offline, gated, or a renamed split: say which dataset failed
        raise BenchmarkFormatError(
            f"cannot load {dataset}[{config or ''}] split {split!r} from the hub: {exc}"
        ) from None
    yield from data
