"""Detecting vLLM ``structured_outputs`` support (``GET /version``, then a probe) against the real local server, and
the scorer sending the verdict regex only where it works."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from perception_r1.judge.client import JudgeSettings
from perception_r1.judge.structured import (
    PROBE_REGEX,
    detect_structured_outputs_sync,
    parse_version,
)
from perception_r1.judge.visual import verdict_regex
from perception_r1.scoring import RewardScorer, ScoreRow
from perception_r1.testing import OpenAITestServer

GOOD = "<think>\nAB = 5 and BC = 12, so AC = 13.\n</think>\n<answer>\n\\boxed{13}\n</answer>"


def settings(*urls: str, **kw) -> JudgeSettings:
    return JudgeSettings(base_urls=tuple(urls), model="judge", max_retries=0, **kw)


def probes(server: OpenAITestServer) -> list[dict]:
    return [r.body for r in server.log if r.body.get("structured_outputs", {}).get("regex") == PROBE_REGEX]


def test_parse_version():
    assert parse_version("0.24.0") == (0, 24, 0) and parse_version("v0.12.0rc1") == (0, 12, 0)
    assert parse_version("0.11.1.dev3+gabc") == (0, 11, 1) and parse_version("") is None
    assert parse_version(None) is None and parse_version("unknown") is None


@pytest.mark.parametrize(("version", "constrained"), [("0.24.0", True), ("0.12.0", True), ("0.12", True), ("0.11.2", False)])
def test_version_decides_without_a_probe(version, constrained):
    with OpenAITestServer(models=["judge"], version=version) as server:
        support = detect_structured_outputs_sync(settings(server.base_url))
        assert server.request_count == 0  # GET /version only
    assert support.constrained is constrained and support.definitive
    assert f"vLLM {version}" in support.reason


def test_without_version_a_probe_decides():
    with OpenAITestServer(models=["judge"], version=None) as server:
        support = detect_structured_outputs_sync(settings(server.base_url))
        assert support.constrained and "honoured a probe regex" in support.reason
        assert len(probes(server)) == 1 and server.log[0].constrained
        server.structured_outputs = False  # a server that silently ignores the field
        support = detect_structured_outputs_sync(settings(server.base_url))
        assert not support.constrained and "ignored a probe regex" in support.reason and support.definitive
        server.reject_unknown_fields = True  # a server that refuses it (api.openai.com does)
        support = detect_structured_outputs_sync(settings(server.base_url))
        assert not support.constrained and "rejected structured_outputs (HTTP 400)" in support.reason


def test_the_setting_overrides_detection():
    with OpenAITestServer(models=["judge"], version="0.11.0") as server:
        on = detect_structured_outputs_sync(settings(server.base_url, structured_outputs="on"))
        off = detect_structured_outputs_sync(settings(server.base_url, structured_outputs="off"))
        assert server.request_count == 0
    assert on.constrained and not off.constrained and "JUDGE_STRUCTURED_OUTPUTS=off" in off.reason


def test_every_replica_must_support_it():
    with (
        OpenAITestServer(models=["judge"]) as new,
        OpenAITestServer(models=["judge"], version="0.10.1") as old,
    ):
        support = detect_structured_outputs_sync(settings(new.base_url, old.base_url))
    assert not support.constrained and old.base_url in support.reason


def test_an_unreachable_judge_is_not_settled_as_free_text():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    support = detect_structured_outputs_sync(settings(f"http://127.0.0.1:{port}/v1"))
    assert not support.constrained and not support.definitive and "could not be probed" in support.reason


def _score(scorer: RewardScorer, n: int = 3) -> list:
    rows = [ScoreRow("geo3k_visual", GOOD, "13", {"visual_annotations": ["AB = 5", "BC = 12"]})] * n

    async def go():
        try:
            return await scorer.score_many(rows)
        finally:
            await scorer.aclose()

    try:
        return asyncio.run(go())
    finally:
        scorer.close()


@pytest.mark.parametrize(("version", "regex"), [("0.24.0", True), ("0.11.0", False)])
def test_scorer_sends_the_regex_only_where_it_works(version, regex, caplog):
    from perception_r1.judge.client import JudgeClient

    caplog.set_level(logging.INFO, logger="perception_r1.scoring")
    with OpenAITestServer(models=["judge"], version=version) as server:
        scorer = RewardScorer(judge=JudgeClient(settings(server.base_url)), workers=1)
        results = _score(scorer)
        bodies = [r.body for r in server.log]
    assert len(bodies) == 3  # one detection for the whole batch, no probe when /version answers
    assert all(("structured_outputs" in b) is regex for b in bodies)
    if regex:
        assert all(b["structured_outputs"] == {"regex": verdict_regex(2)} for b in bodies)
    assert all(r.values["visual"] == 1.0 and r.judge.constrained is regex for r in results)
    mode = "constrained by the structured_outputs verdict regex" if regex else "free text, parsed leniently"
    assert sum(f"judge replies: {mode}" in m for m in caplog.messages) == 1  # reported once
