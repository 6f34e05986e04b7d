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


# ---------------------------------------------------------------- judge cost, canaries, exposed time (issue 12)

from perception_r1.judge.canary import CanaryTally  # noqa: E402
from perception_r1.judge.visual import VisualVerdict  # noqa: E402
from perception_r1.verl_plugin.metrics import judge_step, judge_usage_info  # noqa: E402


def _judged(
    started,
    done,
    *,
    requests=1,
    prompt=900,
    cached=640,
    completion=24,
    failed=False,
    truncated=False,
    unparsed=0,
    constrained=True,
    canary=None,
    canary_verdicts=(),
    error="",
):
    verdict = VisualVerdict(
        verdicts=[1, 0],
        failed=failed,
        latency_s=None if failed else 0.2,
        truncated=truncated,
        unparsed=unparsed,
        requests=requests,
        prompt_tokens=0 if failed else prompt,
        cached_tokens=None if failed else cached,
        completion_tokens=0 if failed else completion,
        constrained=constrained,
        error=error,
    )
    row = _row(0.5, visual=0.0 if failed else 0.5, failed=int(failed), latency=verdict.latency_s)
    row["judge_truncated"] = int(truncated)
    row["judge_usage"] = judge_usage_info(verdict, list(canary_verdicts), canary or CanaryTally(), started, done)
    return row


def _plain(started, done, canary=None, canary_verdicts=()):
    row = _row(1.0)
    row["judge_truncated"] = 0
    row["judge_usage"] = judge_usage_info(None, list(canary_verdicts), canary or CanaryTally(), started, done)
    return row


def test_usage_info_is_a_string_so_validation_metrics_skip_it_and_keys_stay_identical():
    judged, plain = _judged(1.0, 2.0), _plain(1.0, 1.1)
    assert isinstance(judged["judge_usage"], str) and set(judged) == set(plain)
    metrics = reward_metrics([judged, plain])
    assert "reward/judge_usage/mean" not in metrics and "reward/judge_truncated/mean" not in metrics  # counters


def test_cost_per_step_sums_requests_and_tokens_including_retries_and_canaries():
    canary = VisualVerdict(
        [1], failed=False, latency_s=0.1, requests=1, prompt_tokens=800, cached_tokens=700, completion_tokens=8
    )
    rows = [
        _judged(10.0, 11.0, requests=1),
        _judged(10.5, 12.0, requests=3),  # two retries
        _judged(10.2, 12.5, failed=True, requests=4, error="HTTP 503"),
        _plain(10.1, 10.2, canary=CanaryTally(rows=1, pairs=1, agreed=1), canary_verdicts=[canary]),
    ]
    metrics = reward_metrics(rows)
    assert metrics["reward/judge_requests"] == 1 + 3 + 4 + 1
    assert metrics["reward/judge_prompt_tokens"] == 900 * 2 + 800  # a failed call has no usage
    assert metrics["reward/judge_cached_prompt_tokens"] == 640 * 2 + 700
    assert metrics["reward/judge_completion_tokens"] == 24 * 2 + 8


def test_cached_tokens_absent_when_the_server_does_not_report_them():
    rows = [_judged(1.0, 2.0, cached=None), _judged(1.0, 2.0, cached=None)]
    metrics = reward_metrics(rows)
    assert "reward/judge_cached_prompt_tokens" not in metrics  # unknown is not zero
    assert metrics["reward/judge_prompt_tokens"] == 1800


def test_exposed_judge_time_is_last_reward_minus_last_trajectory_end():
    # trajectory ends (reward starts) at 10, 11, 12; rewards done at 15, 12.5, 13.5 -> 15 - 12 = 3 s not hidden
    rows = [_judged(10.0, 15.0), _judged(11.0, 12.5), _judged(12.0, 13.5)]
    assert reward_metrics(rows)["reward/judge_exposed_s"] == pytest.approx(3.0)
    hidden = [_judged(10.0, 10.5), _judged(12.0, 12.25)]  # the judge kept up with rollout: only the last row shows
    assert reward_metrics(hidden)["reward/judge_exposed_s"] == pytest.approx(0.25)


def test_truncated_unparsed_and_constrained_rates_over_answered_rows():
    rows = [
        _judged(1, 2, truncated=True, unparsed=2, constrained=False),
        _judged(1, 2, unparsed=1, constrained=False),
        _judged(1, 2, constrained=False),
        _judged(1, 2, failed=True, constrained=False),  # failed: not an answered reply
        _plain(1, 2),
    ]
    metrics = reward_metrics(rows)
    assert metrics["reward/judge_truncated_rate"] == pytest.approx(1 / 3)
    assert metrics["reward/judge_unparsed_rate"] == pytest.approx(2 / 3)
    assert metrics["reward/judge_constrained"] == 0.0
    assert metrics["reward/judge_failure_rate"] == pytest.approx(1 / 4)


def test_canary_metrics_pool_pairs_over_the_step():
    rows = [
        _plain(1, 2, canary=CanaryTally(rows=1, pairs=3, agreed=3)),
        _judged(1, 2, canary=CanaryTally(rows=2, failed=1, pairs=2, agreed=0, hack_pairs=2, hacked=2)),
        _plain(1, 2),
    ]
    metrics = reward_metrics(rows)
    assert metrics["reward/judge_canary_agreement"] == pytest.approx(3 / 5)  # pooled pairs, not a mean of rows
    assert metrics["reward/judge_canary_hack_rate"] == 1.0
    assert metrics["reward/judge_canaries"] == 3
    no_canaries = reward_metrics([_plain(1, 2), _judged(1, 2)])
    assert not any("canary" in key for key in no_canaries)


def test_judge_step_summary_for_the_breaker():
    rows = [
        _judged(1.0, 2.0),
        _judged(1.0, 3.0, failed=True, error="judge request failed ...: HTTP 503: first"),
        _judged(1.0, 5.0, failed=True, error="judge request failed ...: HTTP 503: last"),
        _judged(1.0, 4.0, canary=CanaryTally(rows=1, pairs=4, agreed=1, hack_pairs=2, hacked=1)),
        _plain(1.0, 2.0),
    ]
    s = judge_step(rows, step=7)
    assert (s.step, s.judged, s.failed) == (7, 4, 2)
    assert s.canary_agreement == 0.25 and s.canary_hack_rate == 0.5
    assert s.last_error.endswith("HTTP 503: last")  # the most recent failure, by completion time
    assert judge_step([_plain(1, 2)], step=1).judged == 0


def test_rows_from_older_managers_without_usage_still_aggregate():
    metrics = reward_metrics([_row(1.0, visual=0.5, latency=0.1), {"score": 0.0, "judge_usage": "not json"}])
    assert metrics["reward/score/mean"] == 0.5 and "reward/judge_requests" not in metrics
