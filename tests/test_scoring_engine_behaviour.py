"""Promises of the scoring engine (``RewardScorer``) that mutation testing found unguarded: the isolated-check memo
evicts the least recently used key, one cancelled row never cancels its group's shared check, an annotated row
without a judge is flagged ``judge_failed``, and a raising rule scorer or check never escapes ``score()``.

Checks run in the real worker pool: the counting check below appends one line per evaluation to a file, so the
number of evaluations is read back from disk, not from the engine's internals.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from perception_r1.rewards import registry
from perception_r1.rewards.geo3k_visual import DATA_SOURCE as GEO3K
from perception_r1.rewards.registry import IsolatedCheck, Task
from perception_r1.scoring import RewardScorer, Scored, ScoreRow, _clean, log_due
from perception_r1.testing import OpenAITestServer

SOURCE = "test_scoring_behaviour_counting"


@dataclass(frozen=True)
class CountingSettings:
    counting_check_limit_s: float = 120.0


def counting_check(key: tuple[str, str], settings: CountingSettings) -> float:
    """Worker side: log one evaluation of ``key`` to the file named by the ground truth; ``raise`` raises; a
    response ``wait`` waits until ``<file>.release`` exists."""
    answer, log = key
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(answer + "\n")
    if answer == "raise":
        raise RuntimeError("check bug")
    if answer == "wait":
        while not os.path.exists(log + ".release"):
            time.sleep(0.01)
    return 1.0 if answer in ("good", "wait") else 0.0


def _rules(response, gt, extra, settings):
    if response == "boom":
        raise ZeroDivisionError("rule bug")
    return {"length": float(len(response))}


COUNTING_TASK = Task(
    data_source=SOURCE,
    settings=CountingSettings,
    validate=lambda gt, extra: None,
    rule_components=_rules,
    combine=lambda c, s: (c.get("check") or 0.0) + 0.001 * (c.get("length") or 0.0),
    output_keys=("check", "length"),
    isolated=IsolatedCheck(
        component="check",
        key=lambda response, gt, s: (response, gt) if response else None,
        fn=counting_check,
        timeout_s=lambda s: s.counting_check_limit_s,
        default=0.25,
    ),
)


@pytest.fixture
def counting(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    registry.registered_tasks()
    registry.register_task(COUNTING_TASK)
    yield tmp_path / "evaluations.log"
    registry._TASKS.pop(SOURCE, None)


def evaluations(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def row(response: str, log: Path) -> ScoreRow:
    return ScoreRow(SOURCE, response, str(log), {})


def test_the_memo_evicts_the_least_recently_used_check(counting):
    scorer = RewardScorer(workers=1, memo_size=2)

    async def go():
        out = []
        for answer in ["good", "bad", "good", "other", "good", "bad"]:  # "bad" is the oldest when "other" comes
            out.append(await scorer.score(row(answer, counting)))
        return out

    try:
        results = asyncio.run(go())
    finally:
        scorer.close()
    assert [r.values["check"] for r in results] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    # "good" was used again before "other" arrived, so "bad" was evicted and is the only key evaluated twice
    assert evaluations(counting) == ["good", "bad", "other", "bad"]


def test_a_memo_of_one_keeps_the_last_key(counting):
    scorer = RewardScorer(workers=1, memo_size=1)

    async def go():
        return [await scorer.score(row(a, counting)) for a in ["good", "good", "bad", "bad", "good"]]

    try:
        asyncio.run(go())
    finally:
        scorer.close()
    assert evaluations(counting) == ["good", "bad", "good"]


def test_a_cancelled_row_does_not_cancel_its_groups_shared_check(counting):
    scorer = RewardScorer(workers=1)

    async def go():
        first = asyncio.ensure_future(scorer.score(row("wait", counting)))
        second = asyncio.ensure_future(scorer.score(row("wait", counting)))
        for _ in range(12000):  # until the worker runs the one shared check (generous: a cold worker imports first)
            if evaluations(counting):
                break
            await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.sleep(0.05)
        Path(str(counting) + ".release").touch()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    try:
        result = asyncio.run(go())
    finally:
        scorer.close()
    assert evaluations(counting) == ["wait"]  # one evaluation for the group
    assert result.values["check"] == 1.0 and not result.isolated_error


def test_a_raising_rule_scorer_scores_the_row_as_garbage(counting, caplog):
    scorer = RewardScorer(workers=1)

    async def go():
        return await scorer.score(row("boom", counting))

    try:
        result = asyncio.run(go())
    finally:
        scorer.close()
    # the rule components are lost (length 0); the isolated check still runs on its own
    assert result.values == {"score": 0.0, "check": 0.0, "length": 0.0}
    assert "rule scorer for test_scoring_behaviour_counting raised; scoring the row as garbage" in caplog.messages


def test_a_raising_check_scores_its_default_and_is_counted(counting, caplog):
    scorer = RewardScorer(workers=1)

    async def go():
        return [await scorer.score(row("raise", counting)) for _ in range(2)]

    try:
        first, second = asyncio.run(go())
    finally:
        scorer.close()
    for result in (first, second):
        assert result.isolated_error and not result.isolated_timed_out
        assert result.values["check"] == 0.25 and result.values["score"] == pytest.approx(0.25 + 0.005)
    assert scorer.isolated_errors == 2 and evaluations(counting) == ["raise"]  # memoized failure, counted per row
    assert "isolated check check failed (1 so far): RuntimeError: check bug" in caplog.text


def test_a_row_without_a_key_gets_the_default_without_a_check(counting):
    scorer = RewardScorer(workers=1)

    async def go():
        return await scorer.score(row("", counting))

    try:
        result = asyncio.run(go())
    finally:
        scorer.close()
    assert result.values["check"] == 0.25 and not result.isolated_error and evaluations(counting) == []


def test_a_non_string_response_is_scored_as_empty(counting, caplog):
    scorer = RewardScorer(workers=1)

    async def go():
        return await scorer.score(ScoreRow(SOURCE, None, str(counting), None))  # type: ignore[arg-type]

    try:
        result = asyncio.run(go())
    finally:
        scorer.close()
    assert result.values == {"score": 0.25, "check": 0.25, "length": 0.0}
    assert "raised" not in caplog.text  # the rule scorer saw "", not None


# ------------------------------------------------------------------------------------------------ no judge


GEO_FACTS = ["AB = 12", "angle C = 30"]
GEO_RESPONSE = "<think>\nAB = 12 and angle C = 30, so x = 6.\n</think>\n<answer>\n\\boxed{6}\n</answer>"


def _with_scorer(scorer: RewardScorer, work):
    """``await work()`` on a fresh event loop, then close the scorer's judge connections and its workers."""

    async def go():
        try:
            return await work()
        finally:
            await scorer.aclose()

    try:
        return asyncio.run(go())
    finally:
        scorer.close()


def _score_all(scorer: RewardScorer, rows: list[ScoreRow]) -> list[Scored]:
    return _with_scorer(scorer, lambda: scorer.score_many(rows))


def test_an_annotated_row_without_a_judge_is_flagged_judge_failed(caplog):
    scorer = RewardScorer(workers=1)
    rows = [ScoreRow(GEO3K, GEO_RESPONSE, "6", {"visual_annotations": GEO_FACTS})] * 2
    results = _score_all(scorer, rows)
    for result in results:
        assert result.values["judge_failed"] == 1 and result.values["visual"] == 0.0
        assert result.judged and result.judge is not None and result.judge.failed
        assert result.judge_error == "no judge is configured" and result.judge_latency_s is None
        assert result.values["accuracy"] == 1.0  # the rest of the row is still scored
    assert scorer.judge_failures == 2 and scorer.judge_calls == 0
    assert caplog.text.count("rows have visual annotations but no judge is configured") == 1  # warned once
    assert "rows have visual annotations but no judge is configured: visual = 0, judge_failed = 1" in caplog.messages


def test_a_row_without_annotations_asks_no_judge():
    scorer = RewardScorer(workers=1)
    [result] = _score_all(scorer, [ScoreRow(GEO3K, GEO_RESPONSE, "6", {"visual_annotations": []})])
    assert result.values["visual"] is None and result.values["judge_failed"] == 0
    assert result.values["judge_truncated"] == 0 and not result.judged and result.judge is None
    # the same column types as a judged row's (0/1 flags), so a JSONL or parquet column never mixes 0 and 0.0
    assert type(result.values["judge_failed"]) is int and type(result.values["judge_truncated"]) is int
    assert result.judge_error is None and result.values["accuracy"] == 1.0


def test_a_judged_row_reports_the_judge_and_its_failures():
    from perception_r1.judge.client import JudgeClient, JudgeSettings

    with OpenAITestServer(models=["judge"], latency_s=0.01) as server:
        settings = JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=0)
        scorer = RewardScorer(judge=JudgeClient(settings), workers=1)
        rows = [ScoreRow(GEO3K, GEO_RESPONSE, "6", {"visual_annotations": [*GEO_FACTS, "BC = 99"]})]
        [ok] = _score_all(scorer, rows)
        server.fail_next(1, status=503)
        scorer = RewardScorer(judge=JudgeClient(settings), workers=1)
        [failed] = _score_all(scorer, rows)
    assert ok.values["visual"] == pytest.approx(2 / 3) and ok.values["judge_failed"] == 0 and ok.judged
    assert ok.judge_latency_s is not None and ok.judge_latency_s >= 0.01 and ok.judge_error is None
    assert ok.values["accuracy"] == 1.0
    assert failed.values["judge_failed"] == 1 and failed.values["visual"] == 0.0
    assert "HTTP 503" in failed.judge_error and scorer.judge_failures == 1 and scorer.judge_calls == 1


# ------------------------------------------------------------------------------------------- output values


def test_components_come_out_as_plain_json_numbers():
    assert _clean(None) is None
    assert _clean(True) == 1 and type(_clean(True)) is int
    assert _clean(3) == 3 and type(_clean(3)) is int
    assert _clean(math.nan) == 0.0 and _clean(math.inf) == 0.0 and _clean(-math.inf) == 0.0
    assert _clean(0.5) == 0.5 and type(_clean(0.5)) is float


def test_default_window_sizes():
    from perception_r1.judge.client import JudgeClient, JudgeSettings

    assert RewardScorer().default_window(10) == 10 and RewardScorer().default_window() == 4096
    small = JudgeClient(JudgeSettings(base_urls=("http://a/v1",), max_concurrency=8))
    large = JudgeClient(JudgeSettings(base_urls=("http://a/v1",), max_concurrency=100))
    assert RewardScorer(judge=small).default_window(10) == 256 and RewardScorer(judge=large).default_window() == 400


def test_settings_are_built_once_per_task_and_bad_values_fail_at_construction():
    scorer = RewardScorer({"visual_weight": 0.7})
    task = registry.get_task(GEO3K)
    assert scorer.settings_for(task) is scorer.settings_for(task) and scorer.settings_for(task).visual_weight == 0.7
    with pytest.raises(ValueError, match="visual_weight"):
        RewardScorer({"visual_weight": "heavy"})


def test_prewarm_starts_workers_only_for_tasks_with_an_isolated_check():
    from perception_r1.isolation import TIMED_OUT

    assert repr(TIMED_OUT) == "TIMED_OUT"
    idle = RewardScorer(workers=1)
    idle.prewarm(["no_such_task", "pageocr"])  # unknown names are skipped; OCR has no isolated check
    assert idle._pool is None
    scorer = RewardScorer(workers=1)
    try:
        scorer.prewarm([GEO3K])
        module = registry.get_task(GEO3K).isolated.fn.__module__
        [slot] = scorer.pool._slots
        for _ in range(30000):  # the worker imports math-verify in the background (generous on a loaded machine)
            if module in slot.warmed:
                break
            time.sleep(0.01)
        assert slot.warmed == {module}
    finally:
        scorer.close()
    everything = RewardScorer(workers=1)
    try:
        everything.prewarm()
        assert everything._pool is not None
    finally:
        everything.close()


# ------------------------------------------------------------------------------ structured-output detection


def _judged_rows(n: int) -> list[ScoreRow]:
    return [ScoreRow(GEO3K, GEO_RESPONSE, "6", {"visual_annotations": GEO_FACTS}) for _ in range(n)]


def test_an_unreachable_judge_is_asked_again_about_structured_outputs(monkeypatch, caplog):
    import logging

    from perception_r1 import scoring
    from perception_r1.judge.client import JudgeClient, JudgeSettings

    caplog.set_level(logging.INFO, logger="perception_r1.scoring")
    monkeypatch.setattr(scoring, "REDETECT_S", 0.0)
    with OpenAITestServer(models=["judge"], version=None) as server:
        server.fail_next(1, status=503)  # the first probe finds the judge down: no verdict on its support
        settings = JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=1, backoff_s=0.01)
        scorer = RewardScorer(judge=JudgeClient(settings), workers=1)

        async def go():
            try:
                first = await scorer.score(_judged_rows(1)[0])
                second = await scorer.score(_judged_rows(1)[0])
                third = await scorer.score(_judged_rows(1)[0])
                return first, second, third
            finally:
                await scorer.aclose()

        try:
            results = asyncio.run(go())
        finally:
            scorer.close()
        judge_requests = [
            r.body for r in server.log if "structured_outputs" not in r.body or r.body["max_tokens"] != 16
        ]
    assert [("structured_outputs" in body) for body in judge_requests] == [False, True, True]
    assert [r.values["visual"] for r in results] == [1.0, 1.0, 1.0]
    assert scorer.structured is not None and scorer.structured.constrained and scorer.structured.definitive
    assert sum(m.startswith("judge replies:") for m in caplog.messages) == 2  # the first answer, then the change


def test_without_a_judge_replies_are_never_constrained():
    scorer = RewardScorer()
    assert asyncio.run(scorer.constrained()) is False


# ----------------------------------------------------------------------------------------------- score_many


def test_score_many_keeps_input_order_counts_progress_and_reports_judge_failures(counting, caplog):
    scorer = RewardScorer(workers=1)
    answers = ["good", "bad", "", "good", "other"]
    done = []

    async def go():
        rows = [row(a, counting) for a in answers] + _judged_rows(2)
        return await scorer.score_many(rows, on_done=done.append, window=2)

    try:
        results = asyncio.run(go())
    finally:
        scorer.close()
    assert [r.values.get("length") for r in results[:5]] == [4.0, 3.0, 0.0, 4.0, 5.0]
    assert [r.values.get("check") for r in results[:5]] == [1.0, 0.0, 0.25, 1.0, 0.0]
    assert done == [1] * 7 and all(r.values["judge_failed"] == 1 for r in results[5:])
    assert "judge failed for 2 of 2 judged rows (visual = 0, judge_failed = 1)" in caplog.messages


def test_score_stream_takes_each_row_once_and_keys_the_results(counting):
    scorer = RewardScorer(workers=1)
    seen = {}

    async def go():
        pairs = ((f"k{i}", row(a, counting)) for i, a in enumerate(["good", "bad", "good"]))
        await scorer.score_stream(pairs, lambda key, result: seen.setdefault(key, result), window=8)

    try:
        asyncio.run(go())
    finally:
        scorer.close()
    assert {k: v.values["check"] for k, v in seen.items()} == {"k0": 1.0, "k1": 0.0, "k2": 1.0}


def test_score_many_of_nothing_is_empty():
    assert asyncio.run(RewardScorer().score_many([])) == []


def test_a_memoized_check_is_shared_across_event_loops(counting):
    scorer = RewardScorer(workers=1)

    async def one(answer):
        return (await scorer.score(row(answer, counting))).values["check"]

    try:
        values = [asyncio.run(one(a)) for a in ["good", "good", "bad", "good"]]  # a fresh loop each time
    finally:
        scorer.close()
    assert values == [1.0, 1.0, 0.0, 1.0] and evaluations(counting) == ["good", "bad"]


def test_isolated_check_failures_are_logged_at_1_10_100_not_every_time(counting, caplog):
    scorer = RewardScorer(workers=1)

    async def go():
        return [await scorer.score(row("raise", counting)) for _ in range(12)]

    try:
        asyncio.run(go())
    finally:
        scorer.close()
    logged = [m for m in caplog.messages if m.startswith("isolated check check failed")]
    assert scorer.isolated_errors == 12 and [m.split("(")[1].split(" ")[0] for m in logged] == ["1", "10"]


def test_repeated_failures_are_logged_at_1_10_100_then_every_1000th():
    assert [n for n in range(1, 5001) if log_due(n)] == [1, 10, 100, 1000, 2000, 3000, 4000, 5000]


def _is_probe(body: dict) -> bool:
    return "structured_outputs" in body and body["max_tokens"] == 16


def test_a_judge_that_could_not_be_asked_is_asked_again_after_30_s_and_a_definitive_answer_is_kept(monkeypatch):
    from types import SimpleNamespace

    from perception_r1 import scoring
    from perception_r1.judge.client import JudgeClient, JudgeSettings

    clock = [1000.0]
    monkeypatch.setattr(scoring, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    assert scoring.REDETECT_S == 30.0
    with OpenAITestServer(models=["judge"], version=None) as server:
        server.fail_next(1, status=503)  # the first probe finds the judge down: no verdict on its support
        settings = JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=1, backoff_s=0.01)
        scorer = RewardScorer(judge=JudgeClient(settings), workers=1)
        probes = []

        async def go():
            for now in (1000.0, 1029.9, 1030.0, 1100.0):  # down, too soon, due (30 s), after a definitive answer
                clock[0] = now
                await scorer.score_many(_judged_rows(3))  # rows at once share one (re-)detection
                probes.append(sum(_is_probe(r.body) for r in server.log))

        _with_scorer(scorer, go)
    assert probes == [1, 1, 2, 2] and scorer.structured.definitive


def test_rows_judged_at_once_share_one_structured_output_probe():
    from perception_r1.judge.client import JudgeClient, JudgeSettings

    with OpenAITestServer(models=["judge"], version=None) as server:
        settings = JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=0)
        scorer = RewardScorer(judge=JudgeClient(settings), workers=1)
        results = _score_all(scorer, _judged_rows(6))
        probes = sum(_is_probe(r.body) for r in server.log)
    assert probes == 1 and [r.values["visual"] for r in results] == [1.0] * 6


def test_rows_sharing_a_check_cost_one_wake_up_per_event_loop(counting):
    """The worker's future is wrapped once per loop, not once per row (a GRPO group of 8 shares one check)."""
    scorer = RewardScorer(workers=1)
    results = _with_scorer(scorer, lambda: scorer.score_many([row("good", counting) for _ in range(4)]))
    [entry] = scorer._memo.values()
    assert [r.values["check"] for r in results] == [1.0] * 4 and evaluations(counting) == ["good"]
    assert len(entry.future._done_callbacks) == 1  # one asyncio wrapper for the four rows


def test_the_judge_counters_count_every_call_and_every_failure():
    from perception_r1.judge.client import JudgeClient, JudgeSettings

    with OpenAITestServer(models=["judge"]) as server:
        server.fail_next(2, status=503)
        settings = JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=0, max_concurrency=1)
        scorer = RewardScorer(judge=JudgeClient(settings), workers=1)
        results = _score_all(scorer, _judged_rows(3))
    assert sorted(r.values["judge_failed"] for r in results) == [0, 1, 1]
    assert (scorer.judge_calls, scorer.judge_failures) == (3, 2)


@pytest.mark.parametrize("entry", ["score_many", "score_stream"])
def test_a_window_of_one_scores_one_row_at_a_time(entry):
    from perception_r1.judge.client import JudgeClient, JudgeSettings

    with OpenAITestServer(models=["judge"], latency_s=0.05) as server:
        settings = JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=0, max_concurrency=8)
        scorer = RewardScorer(judge=JudgeClient(settings), workers=1)
        seen = []

        async def go():
            if entry == "score_many":
                seen.extend(await scorer.score_many(_judged_rows(4), window=1))
            else:
                pairs = enumerate(_judged_rows(4))
                await scorer.score_stream(pairs, lambda key, result: seen.append(result), window=1)

        _with_scorer(scorer, go)
        assert len(seen) == 4 and server.max_in_flight == 1


def test_score_stream_without_a_window_uses_the_default(counting):
    scorer = RewardScorer(workers=1)
    seen = {}
    pairs = ((i, row(a, counting)) for i, a in enumerate(["good", "bad"]))
    _with_scorer(
        scorer, lambda: scorer.score_stream(pairs, lambda key, result: seen.setdefault(key, result.values["check"]))
    )
    assert seen == {0: 1.0, 1: 0.0}


def test_a_closed_scorer_can_be_closed_again_and_starts_fresh_workers_when_used(counting):
    scorer = RewardScorer(workers=1)
    try:
        assert asyncio.run(scorer.score(row("good", counting))).values["check"] == 1.0
        scorer.close()
        scorer.close()  # idempotent
        assert asyncio.run(scorer.score(row("bad", counting))).values["check"] == 0.0  # a new pool
    finally:
        scorer.close()


def test_a_check_past_its_hard_limit_scores_its_default_and_says_so(counting, caplog):
    scorer = RewardScorer(workers=1, settings={"counting_check_limit_s": 0.2})
    result = _with_scorer(scorer, lambda: scorer.score(row("wait", counting)))  # never released: always times out
    assert result.isolated_timed_out and not result.isolated_error and result.values["check"] == 0.25
    assert scorer.isolated_timeouts == 1
    assert "isolated check check hit its hard time limit (1 so far); scoring it 0.25" in caplog.messages


def test_without_a_judge_every_row_of_a_list_starts_at_once(counting, monkeypatch, tmp_path):
    """score_many's default window is the whole list, even past STREAM_WINDOW (the stream's bound)."""
    from perception_r1 import scoring

    monkeypatch.setattr(scoring, "STREAM_WINDOW", 2)
    logs = [tmp_path / f"row{i}.log" for i in range(3)]  # three keys, each check waits for its own release file
    scorer = RewardScorer(workers=1)

    async def go():
        running = asyncio.ensure_future(scorer.score_many([row("wait", log) for log in logs]))
        for _ in range(500):  # every row is submitted before the first await returns; a few turns of the loop
            if len(scorer._memo) == 3:
                break
            await asyncio.sleep(0.01)
        submitted = len(scorer._memo)
        for log in logs:
            Path(str(log) + ".release").touch()
        return submitted, await running

    submitted, results = _with_scorer(scorer, go)
    assert submitted == 3 and [r.values["check"] for r in results] == [1.0] * 3


# ------------------------------------------------------------------ a judged task without an isolated check

ANNOTATED = "test_scoring_behaviour_annotated"


@dataclass(frozen=True)
class NoPromptSettings:
    """A third-party task's settings: no ``judge_prompt`` field, so the paper's judge question applies."""

    weight: float = 1.0


ANNOTATED_TASK = Task(
    data_source=ANNOTATED,
    settings=NoPromptSettings,
    validate=lambda gt, extra: None,
    rule_components=lambda response, gt, extra, s: {"length": float(len(response))},
    combine=lambda c, s: s.weight * (c.get("visual") or 0.0),
    output_keys=("length", "visual", "judge_failed", "judge_truncated"),
    annotations=lambda extra: list(extra.get("facts") or []),
)


@pytest.fixture
def annotated():
    registry.registered_tasks()
    registry.register_task(ANNOTATED_TASK)
    yield
    registry._TASKS.pop(ANNOTATED, None)


def test_a_judged_task_without_an_isolated_check_asks_the_papers_question(annotated):
    from perception_r1.judge.client import JudgeClient, JudgeSettings
    from perception_r1.judge.visual import build_visual_messages

    facts = ["AB = 12", "BC = 99"]
    with OpenAITestServer(models=["judge"], version=None) as server:
        settings = JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=0)
        scorer = RewardScorer(judge=JudgeClient(settings), workers=1)
        rows = [
            ScoreRow(ANNOTATED, "AB = 12 here", None, {"facts": facts}),
            ScoreRow(ANNOTATED, None, None, {"facts": facts}),
        ]  # type: ignore[arg-type]
        results = _score_all(scorer, rows)
        asked = [r.body["messages"] for r in server.log if not _is_probe(r.body)]
    assert [r.values["visual"] for r in results] == [0.5, 0.0] and [r.values["score"] for r in results] == [0.5, 0.0]
    assert all(r.judged and r.values["judge_failed"] == 0 for r in results)
    paper = build_visual_messages(facts, "AB = 12 here", prompt="paper")
    assert len(asked) == 2 and all(m[0] == paper[0] for m in asked)  # the paper's system prompt
    last_user = sorted(m[-1]["content"] for m in asked)
    assert all("AB = 12" in text and "BC = 99" in text for text in last_user)
    assert sum("AB = 12 here" in text for text in last_user) == 1  # each response reached the judge as it was given
