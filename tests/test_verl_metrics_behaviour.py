"""Promises of the per-step reward metrics that mutation testing found unguarded: which failure's error the
breaker shows (the most recent by completion time, the later row on a tie), rows that asked no judge in between,
failed rows without usage, and padding in the middle of a step."""

from __future__ import annotations

import json

from perception_r1.verl_plugin.metrics import (
    judge_step,
    parse_judge_usage,
    reward_infos_from_extra_fields,
    reward_metrics,
)


def failed(error: str | None, done_at: float | None) -> dict:
    usage = {"requests": 1} if done_at is None else {"requests": 1, "done_at": done_at}
    if error:
        usage["error"] = error
    return {"score": 0.0, "judge_failed": 1, "judge_latency_s": None, "judge_usage": json.dumps(usage)}


def answered() -> dict:
    return {"score": 1.0, "judge_failed": 0, "judge_latency_s": 0.3, "judge_usage": json.dumps({"requests": 1})}


NO_JUDGE = {"score": 1.0, "judge_failed": 0, "judge_latency_s": None}


def test_the_breaker_shows_the_most_recent_failure():
    step = judge_step([failed("late", 5.0), NO_JUDGE, failed("early", 3.0), answered()], step=4)
    assert (step.step, step.judged, step.failed, step.last_error) == (4, 3, 2, "late")


def test_on_a_tie_the_later_row_wins_and_a_missing_time_counts_as_the_oldest():
    assert judge_step([failed("first", 2.0), failed("second", 2.0)], 1).last_error == "second"
    assert judge_step([failed("timed", 0.5), failed("untimed", None)], 1).last_error == "timed"
    assert judge_step([failed("untimed", None), failed("timed", 0.5)], 1).last_error == "timed"


def test_failures_without_an_error_or_usage_leave_the_error_empty():
    rows = [failed(None, 3.0), {"score": 0.0, "judge_failed": 1, "judge_latency_s": None}, NO_JUDGE, answered()]
    step = judge_step(rows, 2)
    assert (step.judged, step.failed, step.last_error) == (3, 2, "")
    assert judge_step([answered()], 2).last_error == ""


def test_rows_that_asked_no_judge_do_not_end_the_count():
    step = judge_step([NO_JUDGE, None, answered(), NO_JUDGE, failed("x", 1.0)], 3)
    assert (step.judged, step.failed, step.last_error) == (2, 1, "x")


def test_padding_in_the_middle_of_a_step_skips_only_that_sample():
    infos = [{"score": float(i)} for i in range(4)]
    fields = [{"reward_extra_info": info} for info in infos]
    assert reward_infos_from_extra_fields(fields, [False, True, False, False]) == [infos[0], infos[2], infos[3]]
    assert reward_infos_from_extra_fields([None, {"other": 1}, *fields[:1]]) == [infos[0]]


def test_bookkeeping_keys_before_components_do_not_hide_them():
    from perception_r1.verl_plugin.metrics import reward_metrics

    rows = [{"judge_failed": 0, "judge_latency_s": None, "score": 1.0, "visual": 0.5, "scoring_error": 0}]
    metrics = reward_metrics(rows)
    assert metrics["reward/score/mean"] == 1.0 and metrics["reward/visual/mean"] == 0.5
    assert not any(k.startswith("reward/judge_failed") or k.startswith("reward/scoring_error/") for k in metrics)


def test_an_unreadable_canary_tally_is_skipped_and_the_next_one_counted():
    from perception_r1.verl_plugin.metrics import reward_metrics

    def row(canary):
        return {"score": 1.0, "judge_usage": json.dumps({"requests": 1, "canary": canary})}

    metrics = reward_metrics([row(["x", 0, 0, 0, 0, 0]), row([1, 0, 4]), row([2, 0, 4, 3, 2, 1])])
    assert metrics["reward/judge_canaries"] == 2.0 and metrics["reward/judge_canary_agreement"] == 0.75
    assert metrics["reward/judge_canary_hack_rate"] == 0.5


# ---------------------------------------------------------------------------------------------- reward_metrics


def usage_row(score: float, latency: float | None = 0.2, failed: int = 0, **usage) -> dict:
    return {"score": score, "judge_failed": failed, "judge_latency_s": latency, "judge_usage": json.dumps(usage)}


def test_the_console_shows_the_score_first_then_the_components_by_name():
    """verl's console logger prints metrics in dict order: the reward a user watches comes first."""
    metrics = reward_metrics([{"visual": 0.5, "accuracy": 1.0, "score": 0.8, "format": 1.0}])
    assert list(metrics)[:4] == [
        "reward/score/mean",
        "reward/accuracy/mean",
        "reward/format/mean",
        "reward/visual/mean",
    ]


def test_text_fields_are_never_metrics_even_when_they_read_as_numbers():
    metrics = reward_metrics([{"score": 1.0, "note": "2.5", "raw": b"3", "missing": None}])
    assert metrics == {"reward/score/mean": 1.0}


def test_the_scoring_error_rate_counts_every_failed_row():
    rows = [{"score": 0.0, "scoring_error": 1}, {"score": 0.0, "scoring_error": 1}, {"score": 1.0, "scoring_error": 0}]
    assert reward_metrics(rows)["reward/scoring_error_rate"] == 2 / 3


def test_one_failed_and_one_answered_row_fail_at_half_the_rate():
    metrics = reward_metrics([usage_row(1.0), usage_row(0.0, latency=None, failed=1)])
    assert metrics["reward/judge_failure_rate"] == 0.5


def test_a_usage_without_completion_times_gives_no_exposed_time():
    metrics = reward_metrics([usage_row(1.0, requests=1, started_at=5.0)])
    assert metrics["reward/judge_requests"] == 1.0 and "reward/judge_exposed_s" not in metrics
    metrics = reward_metrics([usage_row(1.0, requests=1, done_at=5.0)])
    assert "reward/judge_exposed_s" not in metrics


def test_the_constrained_share_is_over_the_judged_rows():
    rows = [usage_row(1.0, constrained=1), usage_row(0.5, constrained=0), usage_row(0.0, constrained=0)]
    assert reward_metrics(rows)["reward/judge_constrained"] == 1 / 3


def test_a_usage_that_is_not_an_object_is_no_usage():
    assert parse_judge_usage('{"requests": 2}') == {"requests": 2}
    assert parse_judge_usage("[1, 2]") is None and parse_judge_usage("3") is None and parse_judge_usage("{") is None
    assert "reward/judge_requests" not in reward_metrics([{"score": 1.0, "judge_usage": "[1, 2]"}])


def test_a_rows_usage_is_compact_json_timed_to_the_microsecond_and_errors_only_when_failed():
    from perception_r1.judge.canary import CanaryTally
    from perception_r1.judge.visual import VisualVerdict
    from perception_r1.verl_plugin.metrics import judge_usage_info

    answered = VisualVerdict([1], failed=False, latency_s=0.1, error="a note on an answered call")
    text = judge_usage_info(answered, [], CanaryTally(), 1000.12345678, 1001.98765432)
    usage = json.loads(text)
    assert " " not in text and "error" not in usage  # one short string per trajectory in verl's arrays
    assert (usage["started_at"], usage["done_at"]) == (1000.123457, 1001.987654)
