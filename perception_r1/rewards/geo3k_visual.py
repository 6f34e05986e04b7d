"""``geo3k_visual``: the visual-perception reward of "Perception-R1: Advancing Multimodal Reasoning ... via
Visual Perception Reward".

``score = format_weight·format + accuracy_weight·accuracy + visual_weight·visual + ngram_penalty``, with the
released run's defaults 0.1 / 0.9 / 0.7. ``visual`` (hits / #annotations) comes from the judge step of the
scoring engine; rows without annotations have ``visual = None`` and score on the other terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from .format import FormatRule, Template, format_reward
from .math_answer import MATH_TIMEOUT_S, accuracy_from_key, accuracy_key, quick_verdict
from .ngram import ngram_penalty
from .registry import Components, IsolatedCheck, Task, register_task

DATA_SOURCE = "geo3k_visual"


@dataclass(frozen=True)
class Geo3kVisualSettings:
    """Run settings of the geo3k visual-perception reward (``--set key=value``)."""

    format_weight: float = 0.1
    accuracy_weight: float = 0.9
    visual_weight: float = 0.7
    ngram_size: int = 20
    ngram_max_penalty: float = -2.0
    math_timeout_s: float = MATH_TIMEOUT_S
    """math-verify's own parse/verify timeout (runs on a worker's main thread)."""
    math_hard_timeout_s: float = 15.0
    """Hard limit per accuracy check: past it the worker process is killed and accuracy is 0."""
    judge_prompt: Literal["paper", "strict"] = "paper"
    """The judge's question: ``paper`` (is each fact present in the response, the original's) or ``strict``
    (stated or clearly used by the reasoning); see perception_r1/judge/visual.py and docs/judge.md."""
    template: Template = "think"
    """The response template: ``think`` (the released run) or ``perception`` (a ``<perception>`` block first, the
    original's ``perception_boxed_math_verify`` variant; build the data with ``--template perception``)."""
    format_rule: FormatRule = "strict"
    """``strict``: each tag once, non-empty reasoning and ``\\boxed{}``, surrounding whitespace ignored; ``paper``:
    exactly the original's regex (see :mod:`perception_r1.rewards.format` and docs/fidelity.md)."""
    answer_fallback: bool = True
    """Without a complete ``<answer>`` block, check the last ``\\boxed{}`` of the whole response (the original
    falls back to the whole response); ``false``: no block, accuracy 0."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # The released geo3k run (examples/run_qwen2_5_vl_7b_geo3k_visual_swanlab.sh of the original): weights
        # 0.9 / 0.1, visual factor 0.7, n-gram 20 / -2.0, its format regex; bug fixes kept (docs/fidelity.md).
        "paper": {
            "format_weight": 0.1,
            "accuracy_weight": 0.9,
            "visual_weight": 0.7,
            "ngram_size": 20,
            "ngram_max_penalty": -2.0,
            "template": "think",
            "format_rule": "paper",
            "answer_fallback": True,
            "judge_prompt": "paper",
        },
    }


def validate(ground_truth: Any, extra_info: Mapping[str, Any]) -> None:
    """Ground truth must be a non-empty string/number; ``visual_annotations`` a list of non-empty strings."""
    if (
        isinstance(ground_truth, bool)
        or not isinstance(ground_truth, (str, int, float))
        or not str(ground_truth).strip()
    ):
        raise ValueError(f"ground_truth: expected a non-empty answer string, got {ground_truth!r}")
    annotations = (extra_info or {}).get("visual_annotations")
    if annotations is None:
        return
    if isinstance(annotations, str) or not hasattr(annotations, "__iter__"):
        raise ValueError(f"extra_info.visual_annotations: expected a list of strings, got {type(annotations).__name__}")
    for i, item in enumerate(annotations):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"extra_info.visual_annotations[{i}]: expected a non-empty string, got {item!r}")


def annotations(extra_info: Mapping[str, Any]) -> list[str] | None:
    """The row's visual annotations (``None`` when it has none)."""
    items = (extra_info or {}).get("visual_annotations")
    if items is None:
        return None
    items = [str(a) for a in items]
    return items or None


def rule_components(
    response: str, ground_truth: Any, extra_info: Mapping[str, Any], s: Geo3kVisualSettings
) -> Components:
    """``format`` and ``ngram_penalty`` (``accuracy`` is the isolated check, ``visual`` the judge step)."""
    return {
        "format": format_reward(response, s.template, s.format_rule),
        "ngram_penalty": ngram_penalty(response, n=s.ngram_size, max_penalty=s.ngram_max_penalty),
    }


def combine(c: Components, s: Geo3kVisualSettings) -> float:
    """The weighted sum; a ``None`` visual (no annotations) contributes nothing."""
    visual = c.get("visual")
    return (
        s.format_weight * (c.get("format") or 0.0)
        + s.accuracy_weight * (c.get("accuracy") or 0.0)
        + (s.visual_weight * visual if visual is not None else 0.0)
        + (c.get("ngram_penalty") or 0.0)
    )


TASK = register_task(
    Task(
        data_source=DATA_SOURCE,
        settings=Geo3kVisualSettings,
        validate=validate,
        rule_components=rule_components,
        combine=combine,
        output_keys=("format", "accuracy", "visual", "ngram_penalty", "judge_failed", "judge_truncated"),
        isolated=IsolatedCheck(
            component="accuracy",
            key=accuracy_key,
            fn=accuracy_from_key,
            timeout_s=lambda s: s.math_hard_timeout_s,
            shortcut=quick_verdict,
        ),
        annotations=annotations,
    )
)
