"""MMMU (validation) and MMMU-Pro: the hub parquet exports (one folder per subject for MMMU) or the hub itself
(``MMMU/MMMU``, ``MMMU/MMMU_Pro``). Images are ``image_1`` … ``image_7`` (MMMU-Pro vision: ``image``); options
are a list or its string form; ``<image k>`` placeholders stay in the text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import (
    BenchmarkFormatError,
    BenchmarkItem,
    ImageRef,
    format_choices,
    image_ref,
    letter_for,
    parse_options,
    require,
)

NAME = "mmmu"
PRO_NAME = "mmmu_pro"
FILES = ("**/validation-*.parquet", "**/dev-*.parquet", "*.parquet", "*.jsonl", "*.json")
PRO_FILES = ("**/test-*.parquet", "*.parquet", "*.jsonl", "*.json")
HUB = ("MMMU/MMMU", None, "validation")
PRO_HUB = ("MMMU/MMMU_Pro", "standard (10 options)", "test")
SUBJECTS = (
    "Accounting Agriculture Architecture_and_Engineering Art Art_Theory Basic_Medical_Science Biology Chemistry "
    "Clinical_Medicine Computer_Science Design Diagnostics_and_Laboratory_Medicine Economics Electronics "
    "Energy_and_Power Finance Geography History Literature Manage Marketing Materials Math Mechanical_Engineering "
    "Music Pharmacy Physics Psychology Public_Health Sociology"
).split()
VISION_PROMPT = "Identify the question and the options shown in the image, solve it, and give the letter of the answer."


def _subject_from_id(item_id: str) -> str | None:
    # "validation_Art_Theory_12" -> "Art_Theory"
    parts = item_id.split("_")
    return "_".join(parts[1:-1]) or None if len(parts) >= 3 else None


def _images(row: dict[str, Any], root: Path | None, where: str) -> list[ImageRef]:
    images = []
    for name in ["image"] + [f"image_{k}" for k in range(1, 8)]:
        ref = image_ref(row.get(name), root, where, name)
        if ref is not None:
            images.append(ref)
    return images


def _parse(row: dict[str, Any], where: str, root: Path | None, require_images: bool, name: str) -> BenchmarkItem:
    item_id = str(require(row, "id", where))
    where = f"{where} (id {item_id})"
    answer = str(require(row, "answer", where)).strip()
    options = parse_options(row.get("options"), where, "options")
    images = _images(row, root, where)
    if not images and require_images:
        raise BenchmarkFormatError(f"{where}: missing field 'image_1' (or 'image')")
    question = row.get("question")
    vision = question is None and row.get("image") is not None
    if question is None and not vision:
        raise BenchmarkFormatError(f"{where}: missing field 'question'")
    question_type = row.get("question_type") or ("multiple-choice" if options else "open")
    if question_type == "multiple-choice":
        if not options:
            raise BenchmarkFormatError(f"{where}: field 'options' is empty for a multiple-choice question")
        gold = letter_for(answer, options, where)
        prompt = VISION_PROMPT if vision else f"{question}\nOptions:\n{format_choices(options)}"
        choices, kind = options, "choice"
    else:
        choices, gold, prompt, kind = None, answer, str(question), "text"
    return BenchmarkItem(
        id=item_id,
        benchmark=name,
        prompt=prompt,
        answer=gold,
        answer_type=kind,  # type: ignore[arg-type]
        images=images,
        choices=choices,
        meta={
            "subject": row.get("subject") or _subject_from_id(item_id),
            "subfield": row.get("subfield"),
            "difficulty": row.get("topic_difficulty"),
        },
    )


def parse_row(row: dict[str, Any], where: str, root: Path | None, require_images: bool) -> BenchmarkItem:
    """One MMMU row -> :class:`BenchmarkItem`."""
    return _parse(row, where, root, require_images, NAME)


def parse_pro_row(row: dict[str, Any], where: str, root: Path | None, require_images: bool) -> BenchmarkItem:
    """One MMMU-Pro row (standard or vision setting) -> :class:`BenchmarkItem`."""
    return _parse(row, where, root, require_images, PRO_NAME)
