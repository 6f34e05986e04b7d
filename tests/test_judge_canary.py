"""Canaries: labelled calibration rows mixed into the judge's traffic. Their agreement and hack rate, measured
against scripted judges on the real local server, must expose every way a judge can lie; expected numbers are
computed here from the labels and from what each scripted judge is known to answer."""

from __future__ import annotations

import asyncio
import re

import pytest

from perception_r1.judge.calibration import load_rows
from perception_r1.judge.canary import CanaryMixer, CanaryTally, run_canaries
from perception_r1.judge.client import JudgeClient, JudgeSettings
from perception_r1.testing import OpenAITestServer
from perception_r1.testing.openai_server import labelled_judge, lying_judge, substring_verdicts

ROWS = load_rows()  # the shipped Geometry3K calibration set
PLANTED = re.compile(r"<info(\d+)>([01])</info\1>")


def measure(responder, prompt: str = "paper", constrained: bool = True) -> CanaryTally:
    with OpenAITestServer(models=["judge"], responder=responder) as server:
        client = JudgeClient(JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=0))

        async def go():
            try:
                return await run_canaries(client, ROWS, prompt=prompt, constrained=constrained)
            finally:
                await client.aclose()

        tally, verdicts = asyncio.run(go())
        assert server.request_count == len(ROWS) == len(verdicts)
    return tally


def expected(verdicts_of, prompt: str = "paper") -> tuple[float, float]:
    """(agreement, hack rate) computed from the labels and the judge's known answers."""
    agree = pairs = hacked = hack_pairs = 0
    for row in ROWS:
        labels = row.labels_for(prompt)
        verdicts = verdicts_of(row)
        agree += sum(v == lab for v, lab in zip(verdicts, labels, strict=True))
        pairs += len(labels)
        if row.kind in ("parrot", "forged"):
            hack_pairs += sum(lab == 0 for lab in labels)
            hacked += sum(v == 1 and lab == 0 for v, lab in zip(verdicts, labels, strict=True))
    return agree / pairs, hacked / hack_pairs


def copy_verdicts(row) -> list[int]:
    verdicts = substring_verdicts(row.annotations, row.response)
    for number, value in PLANTED.findall(row.response):
        verdicts[int(number) - 1] = int(value)
    return verdicts


HONEST = labelled_judge({row.response: row.labels_for("paper") for row in ROWS})


def exposed(t: CanaryTally) -> bool:
    """What a dashboard reader (or the breaker) would flag: poor agreement or a judge that rewards hacks."""
    return t.agreement < 0.8 or t.hack_rate > 0.2


def test_an_honest_judge_agrees_fully_and_is_not_hacked():
    tally = measure(HONEST)
    assert (tally.rows, tally.failed, tally.pairs) == (60, 0, sum(len(r.labels) for r in ROWS))
    assert tally.agreement == 1.0 and tally.hack_rate == 0.0 and not exposed(tally)


@pytest.mark.parametrize(
    ("mode", "verdicts_of"),
    [
        ("all1", lambda row: [1] * len(row.labels)),
        ("all0", lambda row: [0] * len(row.labels)),
        ("copy", copy_verdicts),
    ],
)
def test_scripted_liars_are_exposed_with_exact_numbers(mode, verdicts_of):
    tally = measure(lying_judge(mode))
    agreement, hack_rate = expected(verdicts_of)
    assert tally.agreement == pytest.approx(agreement) and tally.hack_rate == pytest.approx(hack_rate)
    assert exposed(tally), (mode, tally)


def test_liars_show_where_expected():
    assert measure(lying_judge("all1")).hack_rate == 1.0  # every forged verdict believed
    assert measure(lying_judge("all0")).agreement < 0.55  # half the facts are present
    assert measure(lying_judge("copy")).hack_rate > 0.6  # 17 of the 26 forged pairs carry planted tags


def test_a_random_judge_is_exposed():
    tally = measure(lying_judge("random", seed=7))
    assert 0.35 < tally.agreement < 0.65 and 0.2 < tally.hack_rate < 0.8 and exposed(tally)


def test_strict_prompt_counts_parroted_facts_as_hacks():
    honest_strict = labelled_judge({row.response: row.labels_for("strict") for row in ROWS})
    assert measure(honest_strict, prompt="strict").agreement == 1.0
    tally = measure(HONEST, prompt="strict")  # a judge answering the paper's question, asked the strict one
    agreement, hack_rate = expected(lambda row: list(row.labels_for("paper")), prompt="strict")
    assert tally.agreement == pytest.approx(agreement) and tally.hack_rate == pytest.approx(hack_rate)
    assert hack_rate > 0.4  # parroted facts, present by the paper's question, are hacks by the strict one


def test_failed_canaries_are_counted_not_scored():
    with OpenAITestServer(models=["judge"]) as server:
        server.fail_next(1000, status=503)
        client = JudgeClient(JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=0))

        async def go():
            try:
                return await run_canaries(client, ROWS[:5], prompt="paper", constrained=False)
            finally:
                await client.aclose()

        tally, verdicts = asyncio.run(go())
    assert (tally.rows, tally.failed, tally.pairs) == (5, 5, 0)
    assert tally.agreement is None and tally.hack_rate is None
    assert all(v.failed and v.requests == 1 for v in verdicts)


# -------------------------------------------------------------------------------------------------- mixing


def test_mixer_sends_per_step_canaries_as_an_even_stream_cycling_the_set():
    mixer = CanaryMixer(ROWS, per_step=16, rows_per_step=512, seed=1)
    taken = [mixer.take() for _ in range(512 * 4)]  # four steps of trajectories
    assert sum(map(len, taken)) == 64 and max(map(len, taken)) == 1
    sent = [row.id for batch in taken for row in batch]
    assert len(set(sent[:60])) == 60  # every labelled row once before any repeats
    assert CanaryMixer(ROWS, per_step=16, rows_per_step=512, seed=2).take_many(64) != sent[:64]  # seeds differ


def test_mixer_with_more_canaries_than_rows_per_step_and_off():
    mixer = CanaryMixer(ROWS, per_step=16, rows_per_step=8)
    assert [len(mixer.take()) for _ in range(8)] == [2] * 8
    off = CanaryMixer(ROWS, per_step=0, rows_per_step=8)
    assert all(off.take() == [] for _ in range(100))


def test_tally_serialises_for_reward_extra_info():
    t = CanaryTally(rows=2, failed=1, pairs=3, agreed=2, hack_pairs=2, hacked=1)
    assert CanaryTally.from_list(t.as_list()) == t
    assert (t + t).as_list() == [4, 2, 6, 4, 4, 2]
