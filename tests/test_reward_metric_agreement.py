"""The reward never prefers an output its benchmark metric scores worse (issue 10, points 5 and 6).

A small slice of ``benchmarks/bench_reward_metric_agreement.py`` (the same perturbation families, the same two
scorers) on real rows of ``../shared/data``: for every row, no pair of candidate outputs is ordered one way by the
reward and the other way by the benchmark metric, both by a clear margin. The ablations that restore the earlier
detection rules must break the property, so this test can fail.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_reward_metric_agreement.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_reward_metric_agreement", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _described(result) -> str:
    return "\n".join(
        f"row {a.row}: metric {a.family} {a.strength} ({a.metric:.3f}) > {b.family} {b.strength} ({b.metric:.3f}) "
        f"but reward {a.reward:.3f} < {b.reward:.3f}"
        for a, b in result.output_inversions[:5]
    )


# Detection uses the benchmark's whole 9-image set: its metric is the AP of an image's answer among the others,
# which depends on the set (docs/benchmarks.md); the other tasks' metrics are per row, so a slice suffices.
@pytest.mark.parametrize(("task", "limit"), [("refcoco", 8), ("pixmo_count", 6), ("pageocr", 2), ("coco_detection", 9)])
def test_no_output_inversions(bench, shared_data, task, limit):
    result = bench.measure(task, shared=shared_data, limit=limit, set_level=False)
    assert result.outputs == limit * len(bench.FAMILIES[task])
    assert not result.output_inversions, _described(result)
    # the correct answer is never beaten, by either scorer
    for row in range(limit):
        items = [s for s in result.scored if s.row == row]
        correct = next(s for s in items if s.family == "correct")
        assert all(s.reward <= correct.reward + 1e-9 and s.metric <= correct.metric + 1e-9 for s in items)


@pytest.mark.parametrize("ablation", ["class_aware=false", "ap_aligned=false"])
def test_earlier_detection_rules_invert_the_metric(bench, shared_data, ablation):
    key, value = ablation.split("=")
    result = bench.measure("coco_detection", shared=shared_data, limit=3, set_level=False, overrides={key: value})
    assert result.output_inversions  # the guard above is not vacuous
    if key == "class_aware":  # perfect boxes with wrong labels outscore answers with right labels
        assert any(b.family == "label_swap" for _, b in result.output_inversions)


def test_set_level_agreement_of_ocr(bench, shared_data):
    """Prediction sets (each perturbation on every page): the rank correlation of reward and benchmark number."""
    result = bench.measure("pageocr", shared=shared_data, limit=3)
    assert result.set_rho >= 0.9
    same_family = [
        (a, b) for a, b in result.set_inversions if a["set"].split()[0] == b["set"].split()[0]
    ]  # within one perturbation, stronger is never rewarded more
    assert not same_family
