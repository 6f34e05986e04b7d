"""Promises of the judge guard rails, canaries and structured-output detection that mutation testing found
unguarded: boundaries (a rate exactly at its limit is healthy), the breaker's one line word for word, setting
conversions, canary mixing and prompt, and what the structured-output probe asks and concludes."""

from __future__ import annotations

import asyncio

import pytest

from perception_r1.judge.calibration import load_rows
from perception_r1.judge.canary import CanaryMixer, CanaryTally, run_canaries
from perception_r1.judge.client import JudgeClient, JudgeSettings
from perception_r1.judge.guard import JudgeBreaker, JudgeGuardSettings, JudgeStep, split_concurrency
from perception_r1.judge.structured import (
    PROBE_REGEX,
    StructuredSupport,
    detect_structured_outputs,
    detect_structured_outputs_sync,
    parse_version,
)
from perception_r1.testing import OpenAITestServer
from perception_r1.testing.openai_server import labelled_judge

ROWS = load_rows()


def step(n, judged=10, failed=0, agreement=None, hack=None, error=""):
    return JudgeStep(n, judged, failed, canary_agreement=agreement, canary_hack_rate=hack, last_error=error)


# ------------------------------------------------------------------------------------------------- settings


def test_zero_canaries_and_a_budget_of_one_are_valid():
    assert JudgeGuardSettings(judge_canaries_per_step=0).judge_canaries_per_step == 0
    assert split_concurrency(1, 1, 0) == 1 and split_concurrency(1, 1, None) == 1
    assert split_concurrency(3, 4, None) == 1 and split_concurrency(8, 3, None) == 2


def test_from_kwargs_converts_strings_and_rejects_booleans_for_counts():
    settings = JudgeGuardSettings.from_kwargs({"judge_failure_patience": "3.0", "judge_max_failure_rate": "0.5"})
    assert settings.judge_failure_patience == 3 and settings.judge_max_failure_rate == 0.5
    with pytest.raises(ValueError, match=r"^judge_failure_patience must be a int, got True$"):
        JudgeGuardSettings.from_kwargs({"judge_failure_patience": True})
    with pytest.raises(ValueError, match=r"^judge_canaries_per_step must be a int, got '2.5'$"):
        JudgeGuardSettings.from_kwargs({"judge_canaries_per_step": "2.5"})


# ------------------------------------------------------------------------------------------------ breaker


def test_a_failure_rate_or_canary_numbers_exactly_at_their_limits_are_healthy():
    settings = JudgeGuardSettings(
        judge_failure_patience=1, judge_min_canary_agreement=0.8, judge_max_canary_hack_rate=0.3
    )
    breaker = JudgeBreaker(settings)
    assert breaker.observe(step(1, judged=10, failed=2, agreement=0.8, hack=0.3)) is None and breaker.streak == 0
    assert breaker.observe(step(2, agreement=0.9, hack=None)) is None  # no hack pairs this step
    assert breaker.observe(step(3, agreement=None, hack=0.2)) is None
    assert breaker.tripped is None


def test_with_the_ceilings_off_even_a_fully_hacked_step_is_healthy():
    breaker = JudgeBreaker(JudgeGuardSettings(judge_failure_patience=1))
    assert breaker.observe(step(1, agreement=0.0, hack=1.0)) is None


def test_the_one_line_after_a_single_bad_step():
    settings = JudgeGuardSettings(judge_failure_patience=1)
    breaker = JudgeBreaker(settings, urls=["http://a:1/v1", "http://b:2/v1"])
    trip = breaker.observe(step(7, judged=10, failed=5, error="HTTP 503:\n  down"))
    assert trip is not None and trip.step == 7
    assert trip.message == (
        "judge breaker: reward/judge_failure_rate above 0.20 for 1 consecutive step (step 7: 0.50); "
        "5 of 10 judged rows failed at step 7; judge http://a:1/v1,http://b:2/v1; last error: HTTP 503: down; "
        "set reward.reward_kwargs.judge_failure_policy=zero to train on with visual = 0"
    )


def test_the_one_line_after_canary_trouble_has_no_policy_hint_and_no_urls():
    settings = JudgeGuardSettings(judge_failure_patience=2, judge_min_canary_agreement=0.9)
    breaker = JudgeBreaker(settings)
    assert breaker.observe(step(3, agreement=0.5)) is None
    trip = breaker.observe(step(4, agreement=0.25))
    assert trip is not None and trip.message == (
        "judge breaker: reward/judge_canary_agreement below 0.90 for 2 consecutive steps (steps 3-4: 0.50, 0.25); "
        "0 of 10 judged rows failed at step 4"
    )


# ----------------------------------------------------------------------------------------------- canaries


def test_tallies_add_field_by_field():
    total = CanaryTally(1, 0, 3, 2, 1, 1) + CanaryTally(2, 1, 4, 4, 2, 0)
    assert total.as_list() == [3, 1, 7, 6, 3, 1] and CanaryTally.from_list(["3", 1, 7, 6, 3, 1]) == total


def test_mixer_rate_and_seeded_order():
    assert CanaryMixer(ROWS, per_step=4, rows_per_step=8).rate == 0.5
    assert CanaryMixer(ROWS, per_step=4, rows_per_step=0).rate == 4.0  # no step size: per trajectory
    assert CanaryMixer(ROWS, per_step=4, rows_per_step=1).rate == 4.0
    assert CanaryMixer([], per_step=4, rows_per_step=8).rate == 0.0 and CanaryMixer([], 4, 8).take() == []
    default = CanaryMixer(ROWS, per_step=1, rows_per_step=1).take_many(len(ROWS))
    assert default == CanaryMixer(ROWS, per_step=1, rows_per_step=1, seed=0).take_many(len(ROWS))
    assert default != CanaryMixer(ROWS, per_step=1, rows_per_step=1, seed=1).take_many(len(ROWS))
    assert sorted(map(str, default)) == sorted(str(r.id) for r in ROWS)  # each row once before any repeats


@pytest.mark.parametrize("prompt", ["paper", "strict"])
def test_canaries_are_asked_with_the_rewards_prompt_and_mode(prompt):
    from perception_r1.judge.visual import build_visual_messages

    honest = labelled_judge({row.response: row.labels_for(prompt) for row in ROWS})
    with OpenAITestServer(models=["judge"], responder=honest) as server:
        client = JudgeClient(JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=0))

        async def go():
            try:
                return await run_canaries(client, ROWS[:3], prompt=prompt, constrained=True)
            finally:
                await client.aclose()

        tally, verdicts = asyncio.run(go())
        bodies = [record.body for record in server.log]
    assert tally.rows == 3 and tally.agreement == 1.0 and len(verdicts) == 3
    system = build_visual_messages(["x"], "y", prompt=prompt)[0]["content"]
    assert all(b["messages"][0]["content"] == system and "structured_outputs" in b for b in bodies)
    assert all(v.constrained for v in verdicts)


# ------------------------------------------------------------------------------------- structured outputs


def test_parse_version_of_nothing_is_none():
    assert parse_version(None) is None and parse_version("") is None and parse_version("v0.12") == (0, 12)


def _detect(server_kwargs, structured="auto"):
    with OpenAITestServer(models=["judge"], **server_kwargs) as server:
        settings = JudgeSettings(
            base_urls=(server.base_url,),
            model="judge",
            structured_outputs=structured,
            max_retries=3,
            backoff_s=0.01,
            temperature=0.7,  # a sampling judge: the probe still asks for a deterministic reply
        )
        support = detect_structured_outputs_sync(settings)
        return support, [record.body for record in server.log], server.base_url


def test_exactly_vllm_0_12_supports_it():
    support, bodies, url = _detect({"version": "0.12.0"})
    assert support == StructuredSupport(True, f"vLLM 0.12.0 at {url}") and bodies == []
    assert (
        support.describe()
        == f"judge replies: constrained by the structured_outputs verdict regex (vLLM 0.12.0 at {url})"
    )


def test_the_probe_asks_once_for_a_short_deterministic_constrained_reply():
    support, bodies, url = _detect({"version": None})
    assert support == StructuredSupport(True, f"{url} honoured a probe regex")
    [body] = bodies
    assert body["max_tokens"] == 16 and body["temperature"] == 0.0
    assert body["structured_outputs"] == {"regex": PROBE_REGEX}


def test_a_probe_that_is_ignored_says_what_came_back():
    support, bodies, url = _detect({"version": None, "structured_outputs": False})
    assert support.constrained is False and support.definitive and len(bodies) == 1
    assert support.reason.startswith(f"{url} ignored a probe regex (replied ")
    assert support.describe().startswith("judge replies: free text, parsed leniently (")


@pytest.mark.parametrize("status, definitive", [(400, True), (422, True), (499, True), (401, False), (404, False),
                                                (408, False), (429, False), (500, False), (503, False)])  # fmt: skip
def test_a_probe_error_is_a_verdict_only_for_a_real_client_error(status, definitive):
    with OpenAITestServer(models=["judge"], version=None) as server:
        server.fail_next(10, status=status)
        settings = JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=3, backoff_s=0.01)
        support = detect_structured_outputs_sync(settings)
        assert len(server.log) == 1  # the probe is one request: no retries
    assert support.constrained is False and support.definitive is definitive
    if definitive:
        assert support.reason == f"{server.base_url} rejected structured_outputs (HTTP {status})"
    else:
        assert support.reason.startswith(f"{server.base_url} could not be probed: ")


def test_the_probe_asks_only_the_replica_being_checked():
    with OpenAITestServer(models=["judge"], version=None) as a, OpenAITestServer(models=["judge"], version=None) as b:
        settings = JudgeSettings(base_urls=(a.base_url, b.base_url), model="judge")
        client = JudgeClient(settings)

        async def go():
            try:
                return await detect_structured_outputs(client)
            finally:
                await client.aclose()

        support = asyncio.run(go())
        assert len(a.log) == 1 and len(b.log) == 1
    assert support.constrained and support.reason == (
        f"{a.base_url} honoured a probe regex; {b.base_url} honoured a probe regex"
    )


def test_the_setting_decides_without_asking():
    assert detect_structured_outputs_sync(
        JudgeSettings(base_urls=("http://127.0.0.1:9/v1",), structured_outputs="off")
    ) == StructuredSupport(False, "JUDGE_STRUCTURED_OUTPUTS=off")
    assert detect_structured_outputs_sync(
        JudgeSettings(base_urls=("http://127.0.0.1:9/v1",), structured_outputs="on")
    ) == StructuredSupport(True, "JUDGE_STRUCTURED_OUTPUTS=on")
