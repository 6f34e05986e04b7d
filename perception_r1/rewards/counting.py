"""``pixmo_count`` counting, detect-then-count: the model points at every object; the points are scored.

Predicted points (``point_2d`` JSON, or the centres of predicted boxes in any box syntax) are matched one-to-one
to the ground-truth points with the Hungarian algorithm. A matched pair at distance ``d`` scores
``max(0, 1 − d / (distance_scale · diagonal))`` (1 on the target, 0 from 10 % of the image diagonal by default);
``location`` is the sum over matched pairs divided by ``max(|pred|, |gt|)``, so missing and extra points both
cost. ``count`` is 1 when the number of predicted points equals the number of ground-truth points, counted the way
the counting benchmark counts (every valid point or box, exact repeats included): a duplicated point is a wrong
count there, so it must be one here (a reward that dropped repeats would prefer an answer the benchmark marks wrong).

``score = format_weight·format + location_weight·location + count_weight·count``: 3.0 for a perfect answer
with the defaults, 0 for empty or unreadable output (when the image has objects).

- ``format`` is 1 when the answer holds points or boxes in a recognised syntax (an empty JSON list ``[]`` counts:
  it claims zero objects) with nothing dropped, and the template holds.

Ground truth: a list of points ``[[x, y], …]`` in original-image pixels (may be empty: zero objects; the count is
its length); ``extra_info.image_size = [w, h]`` (and, from the builders, the ``coord_frame`` / ``min_pixels`` /
``max_pixels`` the data was built for).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .boxes import (
    PerceptionSettings,
    as_json,
    check_frame,
    gt_array,
    read_image_size,
    read_prediction,
    recorded_frame,
)
from .matching import match_points
from .registry import Components, Task, register_task

DATA_SOURCE = "pixmo_count"


@dataclass(frozen=True)
class CountingSettings(PerceptionSettings):
    """Run settings of the counting reward (``--set key=value``); shared names as in :class:`PerceptionSettings`."""

    location_weight: float = 1.0
    count_weight: float = 1.0
    distance_scale: float = 0.1
    """A matched pair scores 0 from this fraction of the image diagonal away (linear in between)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            **PerceptionSettings.PRESETS["paper"],
            "location_weight": 1.0,
            "count_weight": 1.0,
            "distance_scale": 0.1,
        },
    }


def gt_points(ground_truth: Any) -> np.ndarray:
    """Ground-truth points ``(m, 2)``; ``ValueError`` naming ``ground_truth[i]`` when malformed."""
    value = as_json(ground_truth)
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise ValueError(f"ground_truth: expected a list of [x, y] points, got {type(value).__name__}")
    points = [gt_array(p, 2, f"ground_truth[{i}]", boxes=False) for i, p in enumerate(value)]
    # Equivalent mutants: the points are float64 already (an empty list is float64 by default), and numpy reads any
    # negative size as "the rest".
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)  # pragma: no mutate


def validate(ground_truth: Any, extra_info: Mapping[str, Any]) -> None:
    """Ground truth must be a list of ``[x, y]`` points; ``extra_info.image_size`` must be ``[w, h]``."""
    gt_points(ground_truth)
    read_image_size(extra_info or {})
    recorded_frame(extra_info or {})


def rule_components(response: str, ground_truth: Any, extra_info: Mapping[str, Any], s: CountingSettings) -> Components:
    """``format``, ``location``, ``count`` and the parse counters; never raises on model output."""
    gt = gt_points(ground_truth)
    w, h = read_image_size(extra_info or {})
    parsed, template_ok = read_prediction(response, s, (w, h), points=True, extra_info=extra_info)
    n, m = len(parsed), len(gt)
    if n == 0 and m == 0:  # "no objects" is right only when the answer says so cleanly (e.g. "[]")
        location = float(parsed.clean)
    else:
        match, _ = match_points(parsed.coords, gt, s.distance_scale * math.hypot(w, h))
        location = match.total / max(n, m)
    # The count is what the benchmark counts: every valid item, repeats included (a repeat is a wrong count there).
    n_claimed = n + parsed.over_cap
    return {
        "format": float(template_ok and parsed.clean),
        "location": location,
        "count": float(n_claimed == m and (parsed.clean if m == 0 else parsed.syntax is not None)),
        "n_pred": n + parsed.over_cap,
        "n_gt": m,
        "dropped": parsed.dropped,
        "over_cap": parsed.over_cap,
    }


def combine(c: Components, s: CountingSettings) -> float:
    """``format_weight·format + location_weight·location + count_weight·count``."""
    return (
        s.format_weight * (c.get("format") or 0.0)
        + s.location_weight * (c.get("location") or 0.0)
        + s.count_weight * (c.get("count") or 0.0)
    )


TASK = register_task(
    Task(
        data_source=DATA_SOURCE,
        settings=CountingSettings,
        validate=validate,
        rule_components=rule_components,
        combine=combine,
        output_keys=("format", "location", "count", "n_pred", "n_gt", "dropped", "over_cap"),
        check_settings=check_frame,
    )
)
