"""MATH-Vision: the official ``testmini.jsonl``/``test.jsonl`` (``id, question, options, answer, image``), the hub
parquet, or ``MathLLMs/MathVision``. Questions with options are letter-choice; the rest are free form."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .base import (
    LETTERS,
    BenchmarkFormatError,
    BenchmarkItem,
    format_choices,
    image_ref,
    letter_for,
    parse_options,
    require,
)

NAME = "mathvision"
FILES = ("testmini.jsonl", "test.jsonl", "*testmini*.parquet", "*.jsonl", "*.parquet")
HUB = ("MathLLMs/MathVision", None, "testmini")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_row(row: dict[str, Any], where: str, root: Path | None, require_images: bool) -> BenchmarkItem:
    """One MATH-Vision row -> :class:`BenchmarkItem`."""
    item_id = str(require(row, "id", where))
    where = f"{where} (id {item_id})"
    question = str(require(row, "question", where))
    answer = str(require(row, "answer", where)).strip()
    options = parse_options(row.get("options"), where, "options")
    image = image_ref(row.get("decoded_image"), root, where, "decoded_image") or image_ref(
        row.get("image"), root, where, "image"
    )
    if image is None and require_images:
        raise BenchmarkFormatError(f"{where}: missing field 'image'")
    if options:
        choices = options
        gold = letter_for(answer, choices, where)
        only_letters = all(o.strip("() ").upper() == LETTERS[i] for i, o in enumerate(options))
        listing = ", ".join(LETTERS[: len(options)]) if only_letters else format_choices(options)
        prompt = f"{question}\nOptions: {listing}" if only_letters else f"{question}\nOptions:\n{listing}"
        kind = "choice"
    else:
        choices, gold, prompt = None, answer, question
        kind = "number" if _NUMBER.fullmatch(answer) else "expression"
    return BenchmarkItem(
        id=item_id,
        benchmark=NAME,
        prompt=prompt,
        answer=gold,
        answer_type=kind,  # type: ignore[arg-type]
        images=[image] if image else [],
        choices=choices,
        meta={"subject": row.get("subject"), "level": row.get("level")},
    )
