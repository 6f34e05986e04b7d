"""MathVerse (``testmini``): the official ``testmini.json`` (``sample_index, problem_version, question, image,
answer, question_type``), the hub parquet, or ``AI4Math/MathVerse``. Multiple-choice questions carry their
options inside ``question`` ("Choices: A:… B:…"); they are parsed out for answer matching."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .base import LETTERS, BenchmarkFormatError, BenchmarkItem, image_ref, require

NAME = "mathverse"
FILES = ("testmini.json", "*testmini*.parquet", "*.json", "*.jsonl")
HUB = ("AI4Math/MathVerse", "testmini", "testmini")
_CHOICE_LINE = re.compile(r"^\s*\(?([A-H])\)?\s*[:.：]\s*(.*?)\s*$")


def _choices_from_question(question: str) -> list[str] | None:
    _, sep, tail = question.partition("Choices:")
    if not sep:
        return None
    found: dict[str, str] = {}
    for line in tail.splitlines():
        match = _CHOICE_LINE.match(line)
        if match:
            found.setdefault(match.group(1), match.group(2))
    letters = LETTERS[: len(found)]
    if not found or sorted(found) != list(letters):
        return None
    return [found[letter] for letter in letters]


def parse_row(row: dict[str, Any], where: str, root: Path | None, require_images: bool) -> BenchmarkItem:
    """One MathVerse row -> :class:`BenchmarkItem`."""
    item_id = str(require(row, "sample_index", where))
    where = f"{where} (sample_index {item_id})"
    question = str(require(row, "question", where))
    answer = str(require(row, "answer", where)).strip()
    question_type = str(require(row, "question_type", where))
    version = str(row.get("problem_version") or "")
    image = image_ref(row.get("image"), root, where, "image")
    if image is None and require_images and version != "Text Only":
        raise BenchmarkFormatError(f"{where}: missing field 'image'")
    if question_type == "multi-choice":
        choices = _choices_from_question(question) or list(LETTERS[:4])
        gold = answer.strip("() .").upper()
        if gold not in LETTERS[: len(choices)]:
            raise BenchmarkFormatError(f"{where}: field 'answer' {answer!r} is not an option letter")
        kind = "choice"
    elif question_type == "free-form":
        choices, gold, kind = None, answer, "expression"
    else:
        raise BenchmarkFormatError(f"{where}: field 'question_type' {question_type!r} is not multi-choice/free-form")
    return BenchmarkItem(
        id=item_id,
        benchmark=NAME,
        prompt=str(row.get("query_cot") or question),
        answer=gold,
        answer_type=kind,  # type: ignore[arg-type]
        images=[image] if image else [],
        choices=choices,
        meta={
            "problem_version": version,
            "problem_index": row.get("problem_index"),
            "subject": (row.get("metadata") or {}).get("subject"),
        },
    )
