"""MathVista (``testmini``): the official ``testmini.json`` (dict keyed by pid), a JSONL of its rows, the hub
parquet, or ``AI4Math/MathVista`` from the hub. Choice answers are stored as letters; ``answer_text`` keeps the
official option text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import BenchmarkFormatError, BenchmarkItem, format_choices, image_ref, letter_for, parse_options, require

NAME = "mathvista"
FILES = ("testmini.json", "testmini.jsonl", "*testmini*.parquet", "*.jsonl", "*.json")
HUB = ("AI4Math/MathVista", None, "testmini")

_HINTS = {
    "integer": "Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
    "at the end.",
    "list": "Please answer the question requiring a Python list as an answer and provide the final list, e.g., "
    "[1, 2, 3], [1.2, 1.3, 1.4], at the end.",
    "choice": "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
}


def _hint(answer_type: str, precision: int | None) -> str:
    if answer_type == "float":
        if precision == 1:
            return (
                "Please answer the question requiring a floating-point number with one decimal place and provide "
                "the final value, e.g., 1.2, 1.3, 1.4, at the end."
            )
        return (
            "Please answer the question requiring a floating-point number with two decimal places and provide "
            "the final value, e.g., 1.23, 1.34, 1.45, at the end."
        )
    return _HINTS.get(answer_type, _HINTS["integer"])


def parse_row(row: dict[str, Any], where: str, root: Path | None, require_images: bool) -> BenchmarkItem:
    """One MathVista row -> :class:`BenchmarkItem` (the official query layout: hint, question, choices)."""
    pid = row.get("pid", row.get("_key"))
    if pid is None:
        raise BenchmarkFormatError(f"{where}: missing field 'pid'")
    where = f"{where} (pid {pid})"
    question = str(require(row, "question", where))
    answer = str(require(row, "answer", where))
    question_type = require(row, "question_type", where)
    answer_type = require(row, "answer_type", where)
    precision = row.get("precision")
    precision = int(float(precision)) if precision not in (None, "") else None
    unit = row.get("unit") or None
    choices = None
    if question_type == "multi_choice":
        choices = parse_options(require(row, "choices", where), where, "choices")
        if not choices:
            raise BenchmarkFormatError(f"{where}: field 'choices' is empty for a multi_choice question")
        gold, kind = letter_for(answer, choices, where), "choice"
    elif question_type == "free_form":
        if answer_type not in ("integer", "float", "list", "text"):
            raise BenchmarkFormatError(f"{where}: field 'answer_type' {answer_type!r} is not integer/float/list/text")
        if answer_type == "float" and precision is None:
            raise BenchmarkFormatError(f"{where}: field 'precision' is required for a float answer")
        gold, kind = answer, answer_type
    else:
        raise BenchmarkFormatError(f"{where}: field 'question_type' {question_type!r} is not multi_choice/free_form")
    image = image_ref(row.get("decoded_image"), root, where, "decoded_image") or image_ref(
        row.get("image"), root, where, "image"
    )
    if image is None and require_images:
        raise BenchmarkFormatError(f"{where}: missing field 'image' (MathVista questions need their figure)")
    prompt = row.get("query")
    if not prompt:
        text = f"{question} (Unit: {unit})" if unit else question
        prompt = f"Hint: {_hint(kind, precision)}\nQuestion: {text}"
        if choices:
            prompt += "\nChoices:\n" + format_choices(choices)
    metadata = row.get("metadata") or {}
    return BenchmarkItem(
        id=str(pid),
        benchmark=NAME,
        prompt=str(prompt),
        answer=gold,
        answer_type=kind,  # type: ignore[arg-type]
        images=[image] if image else [],
        choices=choices,
        precision=precision,
        unit=unit,
        meta={
            "question_type": question_type,
            "answer_type": answer_type,
            "answer_text": answer,
            "task": metadata.get("task"),
            "context": metadata.get("context"),
            "grade": metadata.get("grade"),
            "source": metadata.get("source"),
            "skills": list(metadata.get("skills") or []),
        },
    )
