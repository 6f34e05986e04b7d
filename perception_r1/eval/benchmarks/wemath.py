"""We-Math: the official ``testmini.json`` (``ID, key, question, option, answer, image_path``) or its JSONL form,
or ``We-Math/We-Math`` from the hub. ``ID`` names a problem group; ``key`` (``2steps_1`` … ``3steps_multi``) is
the row's role in it, which the four-dimensional metrics (IK/IG/CM/RM) need."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .base import LETTERS, BenchmarkFormatError, BenchmarkItem, image_ref, require

NAME = "wemath"
FILES = ("testmini.json", "testmini*.jsonl", "*.jsonl", "*.json", "*.parquet")
HUB = ("We-Math/We-Math", None, "testmini")
_KEY = re.compile(r"^([23])steps_(\d|multi)$")
_OPTION_SPLIT = re.compile(r";\s*(?=[A-H]\s*[.．:])")
_OPTION = re.compile(r"^\s*([A-H])\s*[.．:]\s*(.*?)\s*$", re.DOTALL)


def parse_option_string(option: str, where: str) -> list[str]:
    """``"A. 1 cm;B. 2 cm; E. No correct answer"`` -> ``["1 cm", "2 cm", …]`` in letter order."""
    parsed: dict[str, str] = {}
    for part in _OPTION_SPLIT.split(option.strip()):
        match = _OPTION.match(part)
        if not match:
            raise BenchmarkFormatError(f"{where}: field 'option' has an unreadable part {part[:60]!r}")
        parsed[match.group(1)] = match.group(2)
    letters = LETTERS[: len(parsed)]
    if sorted(parsed) != list(letters):
        raise BenchmarkFormatError(f"{where}: field 'option' letters {sorted(parsed)} are not A.. in sequence")
    return [parsed[letter] for letter in letters]


def parse_row(row: dict[str, Any], where: str, root: Path | None, require_images: bool) -> BenchmarkItem:
    """One We-Math row -> :class:`BenchmarkItem` (id ``"<ID>/<key>"``)."""
    group = str(require(row, "ID", where))
    key = str(require(row, "key", where))
    where = f"{where} (ID {group}, key {key})"
    match = _KEY.match(key)
    if not match:
        raise BenchmarkFormatError(f"{where}: field 'key' {key!r} is not '<2|3>steps_<1|2|3|multi>'")
    question = str(require(row, "question", where))
    option = str(require(row, "option", where))
    choices = parse_option_string(option, where)
    answer = str(require(row, "answer", where)).strip().upper()
    if answer not in LETTERS[: len(choices)]:
        raise BenchmarkFormatError(f"{where}: field 'answer' {answer!r} is not one of the option letters")
    image = None
    for field_name in ("image", "image_path"):
        if row.get(field_name) is not None:
            image = image_ref(row[field_name], root, where, field_name)
            break
    if image is None and require_images:
        raise BenchmarkFormatError(f"{where}: missing field 'image_path'")
    return BenchmarkItem(
        id=f"{group}/{key}",
        benchmark=NAME,
        prompt=f"{question}\nOptions: {option}",
        answer=answer,
        answer_type="choice",
        images=[image] if image else [],
        choices=choices,
        meta={
            "group": group,
            "key": key,
            "steps": int(match.group(1)),
            "step": match.group(2),
            "knowledge_concept": row.get("knowledge concept"),
        },
    )
