"""``pageocr`` page OCR: the transcription is scored by edit distance.

``accuracy = 1 − normalized Levenshtein distance`` (rapidfuzz: distance / max(len)) between the whitespace-
normalized answer and page text (every whitespace run becomes one space, ends stripped: line breaks and
indentation are layout, not content). ``score = format_weight·format + accuracy_weight·accuracy``: 2.0 for a
perfect transcription with the defaults, 0 for empty output.

- ``format`` is 1 when the answer (the whole response; the ``<answer>`` block with ``thinking=true``) is
  non-empty after normalization, holds no chat-template special token (``<|…|>``) that the page text does not
  hold itself (a leaked ``<|im_end|>`` is a template failure; a page that prints ``<|A|>`` is transcribed as it
  is, so a perfect transcription always scores the maximum), and the template holds.

Ground truth: the page text (a non-empty string). ``extra_info.image_size`` is not needed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rapidfuzz.distance import Levenshtein

from .boxes import PerceptionSettings, split_answer
from .registry import Components, Task, register_task

DATA_SOURCE = "pageocr"
_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>")


@dataclass(frozen=True)
class OcrSettings(PerceptionSettings):
    """Run settings of the OCR reward (``--set key=value``); shared names as in :class:`PerceptionSettings`."""

    accuracy_weight: float = 1.0
    case_sensitive: bool = True

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {**PerceptionSettings.PRESETS["paper"], "accuracy_weight": 1.0, "case_sensitive": True},
    }


def normalize_text(text: str) -> str:
    """Collapse every whitespace run to one space and strip the ends.

    >>> normalize_text("  Hello\\n\\n  world\\t! ")
    'Hello world !'
    """
    return " ".join(text.split())


def validate(ground_truth: Any, extra_info: Mapping[str, Any]) -> None:
    """Ground truth must be a non-empty string."""
    if not isinstance(ground_truth, str) or not ground_truth.strip():
        raise ValueError(f"ground_truth: expected the page text as a non-empty string, got {ground_truth!r:.80}")


def edit_accuracy(prediction: str, reference: str, case_sensitive: bool = True) -> float:
    """``1 − normalized edit distance`` of the whitespace-normalized texts, in ``[0, 1]``.

    >>> edit_accuracy("Hello  world", "Hello\\nworld")
    1.0
    >>> edit_accuracy("", "abc")
    0.0
    """
    a, b = normalize_text(prediction), normalize_text(reference)
    if not case_sensitive:
        a, b = a.lower(), b.lower()
    return 1.0 - Levenshtein.normalized_distance(a, b)


def rule_components(response: str, ground_truth: Any, extra_info: Mapping[str, Any], s: OcrSettings) -> Components:
    """``format`` and ``accuracy``; never raises on model output."""
    answer, template_ok = split_answer(response, s.thinking)
    page = str(ground_truth)
    leaked = any(token not in page for token in _SPECIAL_TOKEN.findall(answer))
    return {
        "format": float(template_ok and bool(normalize_text(answer)) and not leaked),
        "accuracy": edit_accuracy(answer, page, s.case_sensitive),
        "n_chars": len(normalize_text(answer)),
    }


def combine(c: Components, s: OcrSettings) -> float:
    """``format_weight·format + accuracy_weight·accuracy``."""
    return s.format_weight * (c.get("format") or 0.0) + s.accuracy_weight * (c.get("accuracy") or 0.0)


TASK = register_task(
    Task(
        data_source=DATA_SOURCE,
        settings=OcrSettings,
        validate=validate,
        rule_components=rule_components,
        combine=combine,
        output_keys=("format", "accuracy", "n_chars"),
    )
)
