"""Benchmark inference against a real local OpenAI-compatible server: images as data URLs, sampling, retries,
concurrency, append-as-you-go and resume after the server fails hard mid-run."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from perception_r1.eval.benchmarks import BenchmarkItem, load_benchmark
from perception_r1.eval.inference import (
    ResultStore,
    ResumeMismatch,
    SamplingSettings,
    build_messages,
    read_predictions,
    run_server,
    run_server_sync,
)
from perception_r1.judge.client import JudgeClient, JudgeSettings
from perception_r1.testing import OpenAITestServer


@pytest.fixture(scope="module")
def items(shared_data: Path) -> list[BenchmarkItem]:
    return load_benchmark("wemath", shared_data / "wemath", limit=12)


def key_of(request: dict) -> str:
    """The question text plus the image bytes: identifies the benchmark item a request is about."""
    content = request["messages"][-1]["content"]
    text = next(part["text"] for part in content if part["type"] == "text")
    image = next(part["image_url"]["url"] for part in content if part["type"] == "image_url")
    return text + "|" + image[-64:]


def client_for(server: OpenAITestServer, **overrides: object) -> JudgeClient:
    settings = {"base_urls": (server.base_url,), "model": "ckpt", "max_concurrency": 4, "backoff_s": 0.01}
    settings.update(overrides)
    return JudgeClient(JudgeSettings(**settings))  # type: ignore[arg-type]


def run(items: list[BenchmarkItem], output: Path, client: JudgeClient, **kwargs: object):
    async def main():
        with ResultStore(output) as store:
            try:
                return await run_server(items, store, client, **kwargs)  # type: ignore[arg-type]
            finally:
                await client.aclose()

    return asyncio.run(main())


def test_messages_carry_images_as_data_urls(items: list[BenchmarkItem], shared_data: Path) -> None:
    messages = build_messages(items[0], template="Q: {question}", system_prompt="be brief")
    assert messages[0] == {"role": "system", "content": "be brief"}
    image_part, text_part = messages[1]["content"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == (shared_data / "wemath" / "images" / "2steps_1-1.png").read_bytes()
    assert text_part == {"type": "text", "text": "Q: " + items[0].prompt}


def test_greedy_default_and_sampling_settable(items: list[BenchmarkItem], tmp_path: Path) -> None:
    with OpenAITestServer(models=["ckpt"], responder=lambda r: "\\boxed{A}") as server:
        summary = run(items[:2], tmp_path / "greedy.jsonl", client_for(server))
        assert summary.written == 2
        assert all(r["temperature"] == 0.0 and r["top_p"] == 1.0 for r in server.requests)
        server.requests.clear()
        sampling = SamplingSettings(temperature=0.7, top_p=0.9, max_tokens=128, seed=3, extra={"top_k": 20})
        run(items[:2], tmp_path / "sampled.jsonl", client_for(server), sampling=sampling)
        request = server.requests[0]
        assert (request["temperature"], request["top_p"], request["max_tokens"], request["seed"]) == (0.7, 0.9, 128, 3)
        assert request["top_k"] == 20  # extra fields reach the server at the top level (vLLM's convention)
    rows = [json.loads(line) for line in (tmp_path / "sampled.jsonl").read_text().splitlines()]
    assert rows[0]["sampling"]["temperature"] == 0.7 and rows[0]["model"] == "ckpt"
    with pytest.raises(ValueError, match="temperature"):
        SamplingSettings(temperature=-1)


def test_concurrency_limit_and_retries(items: list[BenchmarkItem], tmp_path: Path) -> None:
    with OpenAITestServer(models=["ckpt"], responder=lambda r: "\\boxed{B}", latency_s=0.02) as server:
        server.fail_next(3, status=503)  # transient: retried by the client
        summary = run(items, tmp_path / "out.jsonl", client_for(server, max_concurrency=3, max_retries=3))
        assert server.max_in_flight <= 3
    assert summary.written == len(items) and summary.failed == 0 and summary.complete
    ids = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(i.id for i in items)  # each id once despite the retries


def test_server_failing_hard_mid_run_then_resume(items: list[BenchmarkItem], tmp_path: Path) -> None:
    answers = {}
    for item in items:
        answers[key_of({"messages": build_messages(item)})] = item.id
    output = tmp_path / "preds.jsonl"
    calls = {"n": 0}

    def responder(request: dict) -> str:
        calls["n"] += 1
        if calls["n"] == 5:  # from the 5th request on, the server is down hard
            server.fail_next(10**6, status=500)
        return f"answer for {answers[key_of(request)]}: \\boxed{{A}}"

    with OpenAITestServer(models=["ckpt"], responder=responder) as server:
        first = run(items, output, client_for(server, max_concurrency=1, max_retries=1), max_consecutive_failures=3)
        assert first.aborted and not first.complete and first.written == 5
        done_after_first = set(read_predictions(output))
        assert len(done_after_first) == 5
        requested_first = len(server.requests)

        server.faults.clear()  # the server comes back
        second = run(items, output, client_for(server, max_concurrency=2))
        asked_again = [answers[key_of(r)] for r in server.requests[requested_first:]]
    assert second.complete and second.skipped == 5 and second.written == len(items) - 5
    assert not set(asked_again) & done_after_first  # nothing already answered is requested again
    assert len(asked_again) == len(set(asked_again)) == len(items) - 5
    lines = output.read_text().splitlines()
    final = [json.loads(line)["id"] for line in lines]
    assert sorted(final) == sorted(i.id for i in items)  # complete, each id exactly once
    for line in lines:
        row = json.loads(line)
        assert row["response"] == f"answer for {row['id']}: \\boxed{{A}}"


def test_torn_last_line_is_repaired(items: list[BenchmarkItem], tmp_path: Path) -> None:
    output = tmp_path / "preds.jsonl"
    good = {"id": items[0].id, "benchmark": "wemath", "response": "\\boxed{A}", "model": "ckpt"}
    output.write_text(json.dumps(good) + "\n" + '{"id": "' + items[1].id + '", "respo')
    store = ResultStore(output)
    assert store.done_ids() == {items[0].id} and store.repaired_bytes > 0
    assert output.read_text() == json.dumps(good) + "\n"
    assert read_predictions(output) == {items[0].id: "\\boxed{A}"}


def test_resume_refuses_another_model(items: list[BenchmarkItem], tmp_path: Path) -> None:
    output = tmp_path / "preds.jsonl"
    output.write_text(json.dumps({"id": items[0].id, "benchmark": "wemath", "response": "x", "model": "other"}) + "\n")
    with OpenAITestServer(models=["ckpt"], responder=lambda r: "x") as server:
        with pytest.raises(ResumeMismatch, match="model='other'"):
            run_server_sync(items[:2], output, client_for(server))
        assert server.requests == []


def test_bad_result_file_names_the_line(tmp_path: Path) -> None:
    output = tmp_path / "preds.jsonl"
    output.write_text('{"id": "1", "response": "a"}\nnot json\n{"id": "2", "response": "b"}\n')
    with pytest.raises(ValueError, match=r"preds.jsonl:2: invalid JSON"):
        read_predictions(output)
    output.write_text('{"id": "1", "response": 5}\n')
    with pytest.raises(ValueError, match="field 'response' must be a string"):
        read_predictions(output)
