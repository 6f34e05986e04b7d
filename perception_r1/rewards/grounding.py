"""``refcoco`` visual grounding: one box for a referring expression.

``score = format_weight·format + iou_weight·IoU`` (or ``IoU²`` with ``iou_squared=true``, as in the released
Perception-R1 grounding reward), so a perfect answer scores ``format_weight + iou_weight`` (2.0 by default) and
empty or unreadable output scores 0.

- ``format`` is 1 when the answer (the whole response; the ``<answer>`` block with ``thinking=true``) holds
  exactly one box in a recognised syntax with nothing dropped, and the template holds.
- ``iou`` is the IoU, in original-image pixels, of the first valid predicted box with the ground-truth box.

Ground truth: ``[x1, y1, x2, y2]`` in original-image pixels; ``extra_info.image_size = [w, h]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .boxes import PerceptionSettings, as_json, box_iou, gt_array, read_image_size, read_prediction
from .registry import Components, Task, register_task

DATA_SOURCE = "refcoco"


@dataclass(frozen=True)
class GroundingSettings(PerceptionSettings):
    """Run settings of the grounding reward (``--set key=value``); shared names as in :class:`PerceptionSettings`."""

    iou_weight: float = 1.0
    iou_squared: bool = False


def validate(ground_truth: Any, extra_info: Mapping[str, Any]) -> None:
    """Ground truth must be one ``[x1, y1, x2, y2]`` box; ``extra_info.image_size`` must be ``[w, h]``."""
    gt_array(as_json(ground_truth), 4, "ground_truth")
    read_image_size(extra_info or {})


def rule_components(
    response: str, ground_truth: Any, extra_info: Mapping[str, Any], s: GroundingSettings
) -> Components:
    """``format``, ``iou`` and the parse counters (``n_pred``, ``dropped``, ``over_cap``); never raises."""
    gt = gt_array(as_json(ground_truth), 4, "ground_truth")
    parsed, template_ok = read_prediction(response, s, read_image_size(extra_info or {}))
    iou = float(box_iou(parsed.coords[0], gt)) if len(parsed) else 0.0
    return {
        "format": float(template_ok and parsed.clean and len(parsed) + parsed.over_cap == 1),
        "iou": iou,
        "n_pred": len(parsed),
        "dropped": parsed.dropped,
        "over_cap": parsed.over_cap,
    }


def combine(c: Components, s: GroundingSettings) -> float:
    """``format_weight·format + iou_weight·iou`` (``iou²`` when ``iou_squared``)."""
    iou = c.get("iou") or 0.0
    return s.format_weight * (c.get("format") or 0.0) + s.iou_weight * (iou * iou if s.iou_squared else iou)


TASK = register_task(
    Task(
        data_source=DATA_SOURCE,
        settings=GroundingSettings,
        validate=validate,
        rule_components=rule_components,
        combine=combine,
        output_keys=("format", "iou", "n_pred", "dropped", "over_cap"),
    )
)
