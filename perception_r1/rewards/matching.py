"""One-to-one matching of predictions to ground truth: the Hungarian algorithm on a score matrix.

Every perception reward that pairs predictions with objects (counting, detection, evaluation) goes through
:func:`hungarian_match`, which maximises the total pair score with ``scipy.optimize.linear_sum_assignment`` and
keeps only pairs with a positive score (a zero-score pair adds nothing, so dropping it keeps the optimum and
leaves those items unmatched). Tested equal to brute force over all partial matchings on small cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes import pairwise_iou


@dataclass(frozen=True)
class Match:
    """Matched index pairs and their scores: ``pred[i]`` ↔ ``gt[j]`` for ``(i, j)`` in ``zip(pred_idx, gt_idx)``."""

    pred_idx: np.ndarray
    gt_idx: np.ndarray
    scores: np.ndarray

    @property
    def total(self) -> float:
        return float(self.scores.sum())

    def __len__(self) -> int:
        return int(self.pred_idx.shape[0])


def _empty_match() -> Match:
    return Match(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))  # scores: float64


def hungarian_match(score: np.ndarray) -> Match:
    """The one-to-one matching of rows (predictions) to columns (ground truth) with the largest total score.

    ``score`` is ``(n_pred, n_gt)`` with non-negative entries (IoU, or a distance kernel). Pairs scoring 0 are
    left out of the result. Rectangular matrices are fine; ``(0, m)``/``(n, 0)`` give an empty match.

    >>> m = hungarian_match(np.array([[0.9, 0.8], [0.85, 0.0]]))
    >>> m.pred_idx.tolist(), m.gt_idx.tolist(), round(m.total, 2)
    ([0, 1], [1, 0], 1.65)
    """
    s = np.asarray(score, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        return _empty_match()
    s = np.where(np.isfinite(s), s, 0.0)
    from scipy.optimize import linear_sum_assignment  # lazy: scipy.optimize costs ~0.25 s to import

    rows, cols = linear_sum_assignment(s, maximize=True)
    values = s[rows, cols]
    keep = values > 0
    return Match(rows[keep].astype(np.int64), cols[keep].astype(np.int64), values[keep])


def match_boxes(pred: np.ndarray, gt: np.ndarray) -> tuple[Match, np.ndarray]:
    """Hungarian matching of boxes on IoU; returns the match and the full IoU matrix ``(n_pred, n_gt)``."""
    iou = pairwise_iou(pred, gt)
    return hungarian_match(iou), iou


def point_distances(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Euclidean distance matrix ``(n_pred, n_gt)`` between points ``(n, 2)`` and ``(m, 2)``."""
    # floats: integer (and unsigned) inputs must not wrap on subtraction
    a, b = (np.asarray(points, dtype=np.float64) for points in (pred, gt))
    # Equivalent mutants: numpy reads any negative size as "the rest"; with one side empty, broadcasting gives the
    # same (n, m) zeros as the shortcut.
    a, b = a.reshape(-1, 2), b.reshape(-1, 2)  # pragma: no mutate
    if len(a) == 0 or len(b) == 0:  # pragma: no mutate
        return np.zeros((len(a), len(b)))  # float64
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1))


def distance_kernel(distance: np.ndarray, scale: float) -> np.ndarray:
    """Pair score ``max(0, 1 - d / scale)``: 1 on the target, 0 from ``scale`` pixels away (monotone in ``d``)."""
    d = np.asarray(distance)
    if scale <= 0:
        return np.where(d == 0, 1.0, 0.0)
    return np.maximum(1.0 - d / scale, 0.0)  # at most 1: distances are >= 0


def match_points(pred: np.ndarray, gt: np.ndarray, scale: float) -> tuple[Match, np.ndarray]:
    """Hungarian matching of points on the distance kernel; returns the match and the distance matrix."""
    distance = point_distances(pred, gt)
    return hungarian_match(distance_kernel(distance, scale)), distance
