"""``coco_detection`` object detection: every object's box and category name.

Predictions are matched one-to-one to ground-truth objects of the **same category** with the Hungarian algorithm on
IoU, as COCO AP matches detections within each category (among equally good matchings the one with more pairs at
``IoU ≥ match_iou`` wins, so the result does not depend on the order of the predictions). A box with the wrong label
matches nothing: for AP it is a false positive and its object is missed, and the reward says the same, so perfect
boxes with every label wrong score like no answer (0), not 3 of 4 (``class_aware=false`` restores the earlier
class-agnostic matching for ablations). With ``n`` predictions, ``m`` objects and ``TP`` the true positives, the
components follow the reward ablation of Perception-R1 (Table 6):

- ``format``: 1 when the answer holds boxes in a recognised syntax (``[]`` counts: no objects), every box has a
  label, nothing was dropped, and the template holds.
- ``location``: ``Σ IoU(true-positive pairs) / max(n, m)``: localisation quality; extra and missing boxes dilute it.
- ``classification``: ``#(true positives with the right label) / max(n, m)``: binary label reward.
- ``recall``: the number reward, ``F1 = 2·TP / (n + m)`` (both ``n = m = 0``: 1).
- ``missing``: ``(m − TP) / m``, the share of objects not found (a penalty, subtracted).

AP-aligned true positives (``ap_aligned``, the default): a matched pair counts at each of COCO AP's IoU
thresholds ``match_iou, match_iou + 0.05, …, 0.95`` it reaches, by the share it reaches (``IoU`` 0.72 → 5 of 10 →
0.5), because AP averages exactly these thresholds; and a pair below ``match_iou`` earns no ``location`` either,
because AP counts such a box as a false positive, worse than no box. With one threshold at 0.5, a box at IoU 0.55
earned the full recall and label reward while AP gave it a tenth, and loose boxes outranked the answers AP prefers
(docs/fidelity.md, measured). ``ap_aligned=false``: a pair counts whole from ``match_iou`` and every matched pair
earns its IoU (the paper's single threshold, ``preset=paper``).

``score = format_weight·format + location_weight·location + classification_weight·classification
+ recall_weight·recall − missing_weight·missing``. All weights default to 1, so a perfect answer scores 4.0 and
empty or unreadable output scores −1 (0 when the image has no objects); see docs/perception_rewards.md for why.

Ground truth: a list of ``{"bbox": [x1, y1, x2, y2], "label": "<COCO category name>"}`` in original-image pixels
(may be empty); ``extra_info.image_size = [w, h]`` (and, from the builders, the ``coord_frame`` / ``min_pixels`` /
``max_pixels`` the data was built for). Labels compare case-insensitively with whitespace and ``_`` normalized.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .boxes import (
    PerceptionSettings,
    as_json,
    check_frame,
    gt_array,
    pairwise_iou,
    read_image_size,
    read_prediction,
    recorded_frame,
)
from .matching import hungarian_match
from .registry import Components, Task, register_task

DATA_SOURCE = "coco_detection"
# Tie-breakers added to the IoU matrix: far below any IoU difference that matters, far above float noise.
_TP_BONUS = 1e-7
_LABEL_BONUS = 1e-8


@dataclass(frozen=True)
class DetectionSettings(PerceptionSettings):
    """Run settings of the detection reward (``--set key=value``); shared names as in :class:`PerceptionSettings`."""

    location_weight: float = 1.0
    classification_weight: float = 1.0
    recall_weight: float = 1.0
    missing_weight: float = 1.0
    match_iou: float = 0.5
    """A matched pair counts as a true positive (``recall``, ``missing``, ``classification``) from this IoU."""
    ap_aligned: bool = True
    """Credit a true positive by the share of COCO's IoU thresholds ``match_iou:0.05:0.95`` it reaches and give
    pairs below ``match_iou`` no location (as AP); ``false``: whole from ``match_iou``, location for every pair."""
    class_aware: bool = True
    """Match predictions only to objects of their own category (as COCO AP does); ``false``: class-agnostic."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            **PerceptionSettings.PRESETS["paper"],
            "location_weight": 1.0,
            "classification_weight": 1.0,
            "recall_weight": 1.0,
            "missing_weight": 1.0,
            "match_iou": 0.5,
            "ap_aligned": False,
            "class_aware": True,
        },
    }


def normalize_label(label: Any) -> str:
    """Lower-case, ``_`` as space, whitespace collapsed: ``"Traffic_Light "`` → ``"traffic light"``."""
    return " ".join(str(label).replace("_", " ").lower().split()) if label is not None else ""


def gt_objects(ground_truth: Any) -> tuple[np.ndarray, list[str]]:
    """Ground-truth boxes ``(m, 4)`` and normalized labels; ``ValueError`` naming ``ground_truth[i].<field>``."""
    value = as_json(ground_truth)
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise _not_a_list(value)
    try:  # fast path: a well-formed list (the common case, scored 8 times per prompt in GRPO)
        boxes_fast = np.asarray([obj["bbox"] for obj in value], dtype=np.float64).reshape(-1, 4)
        labels_fast = [normalize_label(obj["label"]) for obj in value]
        if (
            len(boxes_fast) == len(labels_fast)
            and np.all(np.isfinite(boxes_fast))
            and np.all(boxes_fast[:, 2:] > boxes_fast[:, :2])
            and all(isinstance(obj["label"], str) for obj in value)
            and all(labels_fast)
        ):
            return boxes_fast, labels_fast
    except (TypeError, ValueError, KeyError, IndexError):
        pass
    for i, obj in enumerate(value):  # not well formed: find the first bad field and name it
        if not isinstance(obj, Mapping):
            raise ValueError(f"ground_truth[{i}]: expected an object with 'bbox' and 'label', got {obj!r:.80}")
        if "bbox" not in obj:
            raise ValueError(f"ground_truth[{i}].bbox: missing")
        gt_array(obj["bbox"], 4, f"ground_truth[{i}].bbox")
        label = obj.get("label")
        if not isinstance(label, str) or not normalize_label(label):
            raise ValueError(f"ground_truth[{i}].label: expected a non-empty category name, got {label!r}")
    raise _not_a_list(value)


def _not_a_list(value: Any) -> ValueError:
    return ValueError(
        f"ground_truth: expected a list of {{'bbox': [x1, y1, x2, y2], 'label': name}}, got {value!r:.80}"
    )


def validate(ground_truth: Any, extra_info: Mapping[str, Any]) -> None:
    """Ground truth must be a list of labelled boxes; ``extra_info.image_size`` must be ``[w, h]``."""
    gt_objects(ground_truth)
    read_image_size(extra_info or {})
    recorded_frame(extra_info or {})


def detection_components(
    pred_boxes: np.ndarray,
    pred_labels: list[str],
    gt_boxes: np.ndarray,
    gt_labels: list[str],
    match_iou: float = 0.5,
    class_aware: bool = True,
    ap_aligned: bool = True,
) -> dict[str, float]:
    """``location``, ``classification``, ``recall`` and ``missing`` of boxes in one frame (labels normalized).

    ``class_aware``: a prediction can only match an object of its own label (COCO AP's rule). ``ap_aligned``: a
    true positive counts by the share of the IoU thresholds ``match_iou:0.05:0.95`` it reaches, and pairs below
    ``match_iou`` earn no location.
    """
    n, m = len(pred_boxes), len(gt_boxes)
    if n == 0 or m == 0:
        both_empty = float(n == 0 and m == 0)
        return {"location": both_empty, "classification": both_empty, "recall": both_empty, "missing": float(m > 0)}
    iou = pairwise_iou(pred_boxes, gt_boxes)
    tp_mask = iou >= match_iou
    same = np.asarray(pred_labels)[:, None] == np.asarray(gt_labels)[None, :]
    weights = iou + _TP_BONUS * tp_mask + _LABEL_BONUS * (tp_mask & same)  # 0 where IoU is 0: never matched
    match = hungarian_match(weights * same if class_aware else weights)
    pairs_iou = iou[match.pred_idx, match.gt_idx]
    if ap_aligned:
        thresholds = _thresholds(match_iou)
        tp = (pairs_iou[:, None] >= thresholds[None, :] - 1e-12).mean(axis=1)
        located = float(pairs_iou[pairs_iou >= match_iou - 1e-12].sum())
    else:
        tp = 1.0 * (pairs_iou >= match_iou)
        located = float(pairs_iou.sum())
    correct = tp * same[match.pred_idx, match.gt_idx]
    n_tp = float(tp.sum())
    return {
        "location": located / max(n, m),
        "classification": float(correct.sum()) / max(n, m),
        "recall": 2.0 * n_tp / (n + m),
        "missing": (m - n_tp) / m,
    }


def _thresholds(lowest: float) -> np.ndarray:
    """COCO's IoU thresholds from ``lowest`` in steps of 0.05 up to 0.95 (``0.5`` → the ten AP thresholds)."""
    count = max(1, int(np.floor((0.95 - lowest) / 0.05 + 1e-9)) + 1)
    return np.round(lowest + 0.05 * np.arange(count), 10)


def rule_components(
    response: str, ground_truth: Any, extra_info: Mapping[str, Any], s: DetectionSettings
) -> Components:
    """``format``, ``location``, ``classification``, ``recall``, ``missing`` and parse counters; never raises."""
    gt_boxes, gt_labels = gt_objects(ground_truth)
    parsed, template_ok = read_prediction(response, s, read_image_size(extra_info or {}), extra_info=extra_info)
    labels = [normalize_label(label) for label in parsed.labels]
    parts = detection_components(parsed.coords, labels, gt_boxes, gt_labels, s.match_iou, s.class_aware, s.ap_aligned)
    if len(parsed) == 0 and not parsed.clean:  # unreadable output claims nothing, not "no objects"
        parts["location"] = parts["classification"] = parts["recall"] = 0.0
    labelled = all(labels)
    return {
        "format": float(template_ok and parsed.clean and labelled),
        **parts,
        "n_pred": len(parsed) + parsed.over_cap,
        "n_gt": len(gt_boxes),
        "dropped": parsed.dropped,
        "over_cap": parsed.over_cap,
    }


def combine(c: Components, s: DetectionSettings) -> float:
    """The weighted sum of the components, ``missing`` subtracted."""
    return (
        s.format_weight * (c.get("format") or 0.0)
        + s.location_weight * (c.get("location") or 0.0)
        + s.classification_weight * (c.get("classification") or 0.0)
        + s.recall_weight * (c.get("recall") or 0.0)
        - s.missing_weight * (c.get("missing") or 0.0)
    )


TASK = register_task(
    Task(
        data_source=DATA_SOURCE,
        settings=DetectionSettings,
        validate=validate,
        rule_components=rule_components,
        combine=combine,
        output_keys=(
            "format",
            "location",
            "classification",
            "recall",
            "missing",
            "n_pred",
            "n_gt",
            "dropped",
            "over_cap",
        ),
        check_settings=check_frame,
    )
)
