"""The one matcher: Hungarian on a score matrix, checked against brute force over all partial matchings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from perception_r1.rewards.boxes import pairwise_iou
from perception_r1.rewards.matching import (
    distance_kernel,
    hungarian_match,
    match_boxes,
    match_points,
    point_distances,
)


def brute_force_best(score: np.ndarray) -> float:
    """The largest total over all one-to-one partial matchings (exhaustive)."""
    n, m = score.shape
    best = 0.0
    if n <= m:
        for cols in itertools.permutations(range(m), n):
            best = max(best, float(sum(max(score[i, j], 0.0) for i, j in enumerate(cols))))
    else:
        for rows in itertools.permutations(range(n), m):
            best = max(best, float(sum(max(score[i, j], 0.0) for j, i in enumerate(rows))))
    return best


def random_boxes(rng: np.random.Generator, k: int) -> np.ndarray:
    xy = rng.uniform(0, 100, size=(k, 2))
    return np.concatenate([xy, xy + rng.uniform(5, 60, size=(k, 2))], axis=1)


@pytest.mark.parametrize("seed", range(60))
def test_box_matching_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(0, 6)), int(rng.integers(0, 6))
    pred, gt = random_boxes(rng, n), random_boxes(rng, m)
    match, iou = match_boxes(pred, gt)
    assert match.total == pytest.approx(brute_force_best(iou), abs=1e-12)
    # a valid one-to-one matching whose scores are the IoUs of its pairs, all positive
    assert len(set(match.pred_idx.tolist())) == len(match) == len(set(match.gt_idx.tolist()))
    np.testing.assert_allclose(match.scores, iou[match.pred_idx, match.gt_idx])
    assert np.all(match.scores > 0)


@pytest.mark.parametrize("seed", range(40))
def test_point_matching_equals_brute_force(seed):
    rng = np.random.default_rng(1000 + seed)
    n, m = int(rng.integers(0, 7)), int(rng.integers(0, 7))
    pred, gt = rng.uniform(0, 100, size=(n, 2)), rng.uniform(0, 100, size=(m, 2))
    match, dist = match_points(pred, gt, scale=40.0)
    assert match.total == pytest.approx(brute_force_best(distance_kernel(dist, 40.0)), abs=1e-12)


def test_integer_ties_equal_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(100):
        score = rng.integers(0, 3, size=(int(rng.integers(1, 6)), int(rng.integers(1, 6)))).astype(float)
        assert hungarian_match(score).total == pytest.approx(brute_force_best(score))


def test_matching_is_not_greedy():
    # greedy takes the 0.9 pair first and ends with 0.9; the optimum pairs crosswise for 1.6
    score = np.array([[0.9, 0.8], [0.8, 0.0]])
    match = hungarian_match(score)
    assert match.total == pytest.approx(1.6)
    assert sorted(zip(match.pred_idx.tolist(), match.gt_idx.tolist(), strict=True)) == [(0, 1), (1, 0)]


def test_edge_cases():
    assert len(hungarian_match(np.zeros((0, 3)))) == 0
    assert len(hungarian_match(np.zeros((3, 0)))) == 0
    assert len(hungarian_match(np.zeros((2, 2)))) == 0  # zero-score pairs are not matches
    assert hungarian_match(np.array([[np.nan, 0.5]])).total == 0.5
    np.testing.assert_allclose(point_distances([[0, 0]], [[3, 4], [0, 0]]), [[5, 0]])
    np.testing.assert_allclose(distance_kernel([0, 5, 10, 20], 10.0), [1, 0.5, 0, 0])
    assert pairwise_iou(np.zeros((0, 4)), np.zeros((2, 4))).shape == (0, 2)
