"""Run-level judge guard rails (pure): the settings, the concurrency budget split across reward workers, and the
breaker that stops a run whose judge fails or lies for too long."""

from __future__ import annotations

import pytest

from perception_r1.judge.guard import (
    GUARD_KEYS,
    JudgeBreaker,
    JudgeGuardSettings,
    JudgeStep,
    split_concurrency,
)

URL = "http://judge-host:8000/v1"
ERROR = "judge request failed after 4 attempt(s) (last: http://judge-host:8000/v1/chat/completions): HTTP 503: down"


def step(n: int, judged: int = 100, failed: int = 0, agreement=None, hack=None, error: str = "") -> JudgeStep:
    return JudgeStep(
        step=n, judged=judged, failed=failed, canary_agreement=agreement, canary_hack_rate=hack, last_error=error
    )


# ----------------------------------------------------------------------------------------------- settings


def test_defaults_are_the_issue_s():
    s = JudgeGuardSettings()
    assert (s.judge_failure_policy, s.judge_max_failure_rate, s.judge_failure_patience) == ("abort", 0.2, 2)
    assert s.judge_canaries_per_step > 0 and s.judge_min_canary_agreement == 0.0  # canaries on, floor off
    assert GUARD_KEYS == {f for f in vars(s)}


def test_settings_from_reward_kwargs_convert_and_reject_bad_values():
    s = JudgeGuardSettings.from_kwargs(
        {"judge_failure_policy": "zero", "judge_max_failure_rate": "0.5", "judge_failure_patience": "3", "other": 1}
    )
    assert (s.judge_failure_policy, s.judge_max_failure_rate, s.judge_failure_patience) == ("zero", 0.5, 3)
    for bad, message in [
        ({"judge_failure_policy": "ignore"}, "judge_failure_policy must be one of abort, zero"),
        ({"judge_max_failure_rate": 1.5}, "judge_max_failure_rate must be in"),
        ({"judge_failure_patience": 0}, "judge_failure_patience must be >= 1"),
        ({"judge_canaries_per_step": -1}, "judge_canaries_per_step must be >= 0"),
        ({"judge_min_canary_agreement": "high"}, "judge_min_canary_agreement"),
    ]:
        with pytest.raises(ValueError, match=message):
            JudgeGuardSettings.from_kwargs(bad)


# ----------------------------------------------------------------------------------------- budget split


@pytest.mark.parametrize(("total", "workers"), [(64, 8), (64, 5), (256, 8), (7, 3), (100, 1)])
def test_split_sums_to_the_total_and_is_even(total, workers):
    shares = [split_concurrency(total, workers, i) for i in range(workers)]
    assert sum(shares) == total and max(shares) - min(shares) <= 1


def test_split_never_gives_zero_and_unknown_index_rounds_down():
    assert [split_concurrency(4, 8, i) for i in range(8)] == [1] * 8  # over budget: 1 each (warned by the caller)
    assert split_concurrency(64, 5, None) == 12  # no worker index: the floor, never over the total
    with pytest.raises(ValueError, match="max_concurrency"):
        split_concurrency(0, 8, 0)


# ------------------------------------------------------------------------------------------------ breaker


def test_trips_after_patience_consecutive_bad_steps_with_one_clear_line():
    breaker = JudgeBreaker(JudgeGuardSettings(), urls=[URL])
    assert breaker.observe(step(1, failed=50, error=ERROR)) is None  # 0.5 > 0.2, streak 1 of 2
    assert breaker.streak == 1
    trip = breaker.observe(step(2, failed=96, judged=128, error=ERROR))
    assert trip is not None and trip.step == 2 and "\n" not in trip.message
    assert trip.message.startswith("judge breaker: reward/judge_failure_rate above 0.20 for 2 consecutive steps")
    assert "96 of 128 judged rows failed at step 2" in trip.message
    assert URL in trip.message and ERROR in trip.message  # which judge, and the server's last word
    assert "judge_failure_policy=zero" in trip.message  # how to train on anyway


def test_blips_below_the_limit_or_shorter_than_patience_keep_going():
    breaker = JudgeBreaker(JudgeGuardSettings(), urls=[URL])
    for n, failed in enumerate([20, 50, 0, 50, 10, 20, 60], start=1):  # 0.2 is not above 0.2
        assert breaker.observe(step(n, failed=failed)) is None
    assert breaker.streak == 1


def test_a_step_without_judged_rows_neither_counts_nor_resets():
    breaker = JudgeBreaker(JudgeGuardSettings(judge_failure_patience=2), urls=[URL])
    assert breaker.observe(step(1, failed=100)) is None
    assert breaker.observe(step(2, judged=0)) is None and breaker.streak == 1
    assert breaker.observe(step(3, failed=100)) is not None


def test_policy_zero_never_trips_on_failures():
    breaker = JudgeBreaker(JudgeGuardSettings(judge_failure_policy="zero"), urls=[URL])
    assert all(breaker.observe(step(n, failed=100)) is None for n in range(1, 10))


def test_canary_floor_and_hack_ceiling_trip_when_set():
    floor = JudgeBreaker(JudgeGuardSettings(judge_min_canary_agreement=0.7, judge_failure_patience=1), urls=[URL])
    assert floor.observe(step(1, agreement=0.9)) is None
    assert floor.observe(step(2, agreement=None)) is None  # no canary answered this step
    trip = floor.observe(step(3, agreement=0.45))
    assert trip is not None and "reward/judge_canary_agreement below 0.70" in trip.message and "0.45" in trip.message
    hack = JudgeBreaker(JudgeGuardSettings(judge_max_canary_hack_rate=0.2, judge_failure_patience=1), urls=[URL])
    trip = hack.observe(step(1, hack=0.65))
    assert trip is not None and "reward/judge_canary_hack_rate above 0.20" in trip.message
    off = JudgeBreaker(JudgeGuardSettings(judge_failure_patience=1), urls=[URL])  # defaults: both off
    assert off.observe(step(1, agreement=0.0, hack=1.0)) is None


def test_streak_resets_on_a_healthy_step_and_the_breaker_stays_tripped():
    breaker = JudgeBreaker(JudgeGuardSettings(judge_failure_patience=3), urls=[URL])
    assert breaker.observe(step(1, failed=90)) is None and breaker.observe(step(2, failed=90)) is None
    assert breaker.observe(step(3, failed=0)) is None and breaker.streak == 0
    for n in (4, 5):
        assert breaker.observe(step(n, failed=90)) is None
    first = breaker.observe(step(6, failed=90))
    assert first is not None and breaker.tripped is first
    assert "for 3 consecutive steps (steps 4-6: 0.90, 0.90, 0.90)" in first.message
