"""Training metrics from reward components (pure function) and the ``perception_sync`` trainer registration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception_r1.verl_plugin import TRAINER_MODE, split_reward_kwargs
from perception_r1.verl_plugin.metrics import reward_infos_from_extra_fields, reward_metrics


def _row(score, visual=None, failed=0, latency=None, error=0, **extra):
    return {
        "score": score,
        "format": 1.0,
        "accuracy": None,
        "visual": visual,
        "judge_failed": failed,
        "judge_latency_s": latency,
        "scoring_error": error,
        **extra,
    }


def test_component_means_leave_out_none() -> None:
    rows = [_row(1.0, visual=None), _row(0.5, visual=0.5, latency=0.1), _row(0.0, visual=1.0, latency=0.3)]
    metrics = reward_metrics(rows)
    assert metrics["reward/score/mean"] == pytest.approx(0.5)
    assert metrics["reward/visual/mean"] == pytest.approx(0.75)  # the row without annotations is not a 0
    assert metrics["reward/format/mean"] == 1.0
    assert "reward/accuracy/mean" not in metrics  # all None: no metric rather than a fake 0
    assert not any(
        key.startswith(("reward/judge_failed", "reward/judge_latency_s", "reward/scoring_error/")) for key in metrics
    )


def test_judge_failure_rate_counts_only_judged_rows() -> None:
    rows = [
        _row(1.0),  # no annotations: not judged
        _row(1.0),
        _row(0.2, visual=0.0, failed=1),  # judged, failed
        _row(0.9, visual=1.0, latency=0.2),  # judged, ok
        _row(0.9, visual=1.0, latency=0.4),
        _row(0.9, visual=1.0, latency=0.6),
    ]
    metrics = reward_metrics(rows)
    assert metrics["reward/judge_failure_rate"] == pytest.approx(1 / 4)


def test_latency_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(0)
    latencies = rng.gamma(2.0, 0.05, size=257)
    rows = [_row(0.5, visual=0.5, latency=float(x)) for x in latencies] + [_row(0.0, visual=0.0, failed=1)] * 3
    metrics = reward_metrics(rows)
    assert metrics["reward/judge_latency_p50"] == pytest.approx(float(np.percentile(latencies, 50)))
    assert metrics["reward/judge_latency_p95"] == pytest.approx(float(np.percentile(latencies, 95)))
    assert metrics["reward/judge_failure_rate"] == pytest.approx(3 / 260)


def test_no_judged_rows_means_no_judge_metrics_and_empty_input_is_empty() -> None:
    metrics = reward_metrics([_row(1.0), _row(0.0)])
    assert not any("judge" in key for key in metrics)
    assert reward_metrics([]) == {}
    assert reward_metrics([None, "garbage"]) == {}


def test_non_finite_and_non_numeric_values_never_reach_a_metric() -> None:
    metrics = reward_metrics([_row(math.nan, tag="text"), _row(1.0, visual=math.inf), _row(0.0, visual=0.5)])
    assert metrics["reward/score/mean"] == pytest.approx(0.5)
    assert metrics["reward/visual/mean"] == pytest.approx(0.5)
    assert "reward/tag/mean" not in metrics
    assert all(math.isfinite(v) for v in metrics.values())


def test_scoring_error_rate() -> None:
    metrics = reward_metrics([_row(0.0, error=1), _row(1.0), _row(1.0), _row(1.0)])
    assert metrics["reward/scoring_error_rate"] == pytest.approx(0.25)
    assert "reward/scoring_error_rate" not in reward_metrics([_row(1.0)])


def test_reward_infos_from_extra_fields_skips_padding_and_rows_without_info() -> None:
    fields = [
        {"reward_extra_info": {"score": 1.0}, "min_global_steps": 1},
        {"min_global_steps": 1},  # no reward info (e.g. colocated reward model path)
        None,
        {"reward_extra_info": {"score": 0.0}},
        {"reward_extra_info": {"score": 0.5}},
    ]
    infos = reward_infos_from_extra_fields(fields, padding=[False, False, False, False, True])
    assert infos == [{"score": 1.0}, {"score": 0.0}]


def test_split_reward_kwargs_rejects_typos_and_bad_values() -> None:
    settings, plugin = split_reward_kwargs({"visual_weight": "0.5", "isolation_workers": 2})
    assert settings == {"visual_weight": "0.5"} and plugin == {"isolation_workers": 2}
    with pytest.raises(ValueError, match="visual_weigth"):
        split_reward_kwargs({"visual_weigth": 0.5})
    with pytest.raises(ValueError, match="visual_weight"):
        split_reward_kwargs({"visual_weight": "heavy"})
    with pytest.raises(ValueError, match="isolation_workers"):
        split_reward_kwargs({"isolation_workers": 0})


def test_trainer_registered_in_verl_registry_and_behaves_as_sync() -> None:
    from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls

    from perception_r1.verl_plugin.trainer import PerceptionPPOTrainer

    cls = get_trainer_cls(TRAINER_MODE)
    assert cls is PerceptionPPOTrainer and issubclass(cls, PPOTrainerSync)
    assert cls._compute_metrics is not PPOTrainerSync._compute_metrics
    trainer = cls.__new__(cls)
    trainer.trainer_mode = TRAINER_MODE  # what verl's __init__ assigns from the config
    assert trainer.trainer_mode == "sync"  # verl's sync-only branches (replay buffer, refill) stay on
