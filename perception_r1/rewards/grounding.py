"""``refcoco`` visual grounding: one box for a referring expression.

``score = format_weight·format + iou_weight·IoU²`` (the released Perception-R1 grounding reward squares the IoU,
which sharpens the reward near a perfect box; ``iou_squared=false`` uses the plain IoU), so a perfect answer scores
``format_weight + iou_weight`` (2.0 by default) and empty or unreadable output scores 0.

- ``format`` is 1 when the answer (the whole response; the ``<answer>`` block with ``thinking=true``) holds a box
  in a recognised syntax with nothing dropped, and the template holds. Extra boxes after the first do not break it:
  the benchmark (Acc@0.5) reads the first box only, and a reward that cut an answer with a right first box below a
  wrong single box would prefer the output the benchmark scores worse (docs/fidelity.md).
- ``iou`` is the IoU, in original-image pixels, of the first valid predicted box with the ground-truth box.

Ground truth: ``[x1, y1, x2, y2]`` in original-image pixels; ``extra_info.image_size = [w, h]`` (and, from the
builders, the ``coord_frame`` / ``min_pixels`` / ``max_pixels`` the data was built for).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .boxes import (
    PerceptionSettings,
    as_json,
    box_iou,
    check_frame,
    gt_array,
    read_image_size,
    read_prediction,
    recorded_frame,
)
from .registry import Components, Task, register_task

DATA_SOURCE = "refcoco"


@dataclass(frozen=True)
class GroundingSettings(PerceptionSettings):
    """Run settings of the grounding reward (``--set key=value``); shared names as in :class:`PerceptionSettings`."""

    iou_weight: float = 1.0
    iou_squared: bool = True

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {**PerceptionSettings.PRESETS["paper"], "iou_weight": 1.0, "iou_squared": True},
    }


def validate(ground_truth: Any, extra_info: Mapping[str, Any]) -> None:
    """Ground truth must be one ``[x1, y1, x2, y2]`` box; ``extra_info.image_size`` must be ``[w, h]``."""
    gt_array(as_json(ground_truth), 4, "ground_truth")
    read_image_size(extra_info or {})
    recorded_frame(extra_info or {})


def rule_components(
    response: str, ground_truth: Any, extra_info: Mapping[str, Any], s: GroundingSettings
) -> Components:
    """``format``, ``iou`` and the parse counters (``n_pred``, ``dropped``, ``over_cap``); never raises."""
    # Equivalent mutants: rows reach rule_components validated (``validate`` names the field), so this name is
    # never shown.
    gt = gt_array(as_json(ground_truth), 4, "ground_truth")  # pragma: no mutate
    parsed, template_ok = read_prediction(response, s, read_image_size(extra_info or {}), extra_info=extra_info)
    iou = float(box_iou(parsed.coords[0], gt)) if len(parsed) else 0.0
    return {
        "format": float(template_ok and parsed.clean and len(parsed) > 0),
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
        check_settings=check_frame,
    )
)
