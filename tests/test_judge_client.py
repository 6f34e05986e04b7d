"""JudgeClient against the real local OpenAI-compatible server: retries, timeouts, replicas, concurrency, preflight."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket

import pytest

from perception_r1.judge.client import JudgeClient, JudgeError, JudgeSettings, JudgeUnavailable
from perception_r1.testing import OpenAITestServer

KEY = "test-secret-key"
MESSAGES = [{"role": "user", "content": "hello"}]


def closed_port_url() -> str:
    """A URL on a port nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def make(urls: str, **kw) -> JudgeClient:
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("api_key", KEY)
    kw.setdefault("model", "judge")
    return JudgeClient(JudgeSettings(base_urls=JudgeSettings.split_urls(urls), **kw))


# Far past every limit these tests configure (at most a few seconds): a client that ignores its own timeouts fails
# the test here instead of waiting for a hanging server forever.
GUARD_S = 30


def run_chats(client: JudgeClient, n: int = 1, **params):
    """``n`` concurrent chats on one loop; exceptions are returned, not raised."""

    async def go():
        try:
            chats = asyncio.gather(*(client.chat(MESSAGES, **params) for _ in range(n)), return_exceptions=True)
            return await asyncio.wait_for(chats, GUARD_S)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.fixture
def server():
    with OpenAITestServer(models=["judge"], api_key=KEY, responder=lambda req: "<info1>1</info1>") as s:
        yield s


def test_scripted_judgement_and_request_shape(server):
    [result] = run_chats(make(server.base_url, max_tokens=77), temperature=0.5)
    assert result.text == "<info1>1</info1>" and result.attempts == 1
    assert result.completion_tokens == len("<info1>1</info1>") // 4
    assert result.prompt_tokens == len(json.dumps(MESSAGES)) // 4 == server.log[0].usage["prompt_tokens"]
    [body] = server.requests
    assert body["model"] == "judge" and body["messages"] == MESSAGES
    assert body["max_tokens"] == 77 and body["temperature"] == 0.5  # per-call params override settings
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"


def test_latency_is_waited_for_and_reported(server):
    server.latency_s = 0.3
    [result] = run_chats(make(server.base_url, timeout_s=10))
    assert result.text == "<info1>1</info1>" and result.latency_s >= 0.3


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_retryable_statuses_then_success(server, status):
    server.fail_next(2, status=status)
    client = make(server.base_url, max_retries=3)
    [result] = run_chats(client)
    assert result.text == "<info1>1</info1>" and result.attempts == 3
    assert client.stats.retries == 2 and client.stats.failures == 0 and server.request_count == 3


def test_retry_budget_exhausted_raises_judge_error(server):
    server.fail_next(10, status=500)
    client = make(server.base_url, max_retries=2)
    [error] = run_chats(client)
    assert isinstance(error, JudgeError) and "3 attempt(s)" in str(error) and "HTTP 500" in str(error)
    assert server.request_count == 3 and client.stats.failures == 1


@pytest.mark.parametrize("status", [400, 404])
def test_client_errors_are_not_retried(server, status):
    server.fail_next(1, status=status)
    [error] = run_chats(make(server.base_url, max_retries=3))
    assert isinstance(error, JudgeError) and f"HTTP {status}" in str(error)
    assert server.request_count == 1


def test_hanging_server_times_out_then_retry_succeeds(server):
    server.fail_next(1, hang_s=math.inf)  # answers only when the server stops: the timeout is the one way out
    client = make(server.base_url, timeout_s=5, max_retries=1)  # room for the retry's answer on a loaded machine
    [result] = run_chats(client)
    assert result.text == "<info1>1</info1>" and result.attempts == 2


def test_hanging_server_exhausts_budget_with_timeout(server):
    server.fail_next(5, hang_s=math.inf)
    [error] = run_chats(make(server.base_url, timeout_s=0.3, max_retries=1))  # never answered: any timeout ends it
    assert isinstance(error, JudgeError) and "timeout" in str(error)


def test_connection_refused():
    client = make(closed_port_url(), max_retries=2)
    [error] = run_chats(client)
    assert isinstance(error, JudgeError) and "connection error" in str(error)
    assert client.stats.requests == 3 and client.stats.retries == 2


def test_round_robin_over_replicas():
    with OpenAITestServer(models=["judge"], api_key=KEY) as a, OpenAITestServer(models=["judge"], api_key=KEY) as b:
        results = run_chats(make(f"{a.base_url}, {b.base_url}/"), n=20)
        assert all(not isinstance(r, Exception) for r in results)
        assert a.request_count == 10 and b.request_count == 10


def test_one_replica_down_every_request_still_succeeds(server):
    client = make(f"{closed_port_url()},{server.base_url}", max_retries=1)
    results = run_chats(client, n=12)
    assert all(r.text == "<info1>1</info1>" for r in results)
    assert server.request_count == 12 and client.stats.failures == 0
    assert client.stats.retries >= 1  # the requests sent to the dead replica went to the live one


def test_concurrency_is_bounded(server):
    server.latency_s = 0.1
    results = run_chats(make(server.base_url, max_concurrency=4), n=24)
    assert all(not isinstance(r, Exception) for r in results)
    assert 1 < server.max_in_flight <= 4


def test_malformed_settings_are_rejected():
    with pytest.raises(ValueError, match="http"):
        JudgeSettings.split_urls("localhost:8000")
    with pytest.raises(ValueError, match="empty"):
        JudgeSettings(base_urls=())
    with pytest.raises(ValueError, match="max_concurrency"):
        JudgeSettings(base_urls=("http://x/v1",), max_concurrency=0)
    assert JudgeSettings.split_urls("http://a:1, http://b:2/v1/ ,") == ("http://a:1/v1", "http://b:2/v1")


def test_settings_from_env(monkeypatch):
    monkeypatch.delenv("VLLM_SERVER_BASE_URL", raising=False)
    assert JudgeSettings.from_env() is None
    monkeypatch.setenv("VLLM_SERVER_BASE_URL", "http://a:1,http://b:2")
    monkeypatch.setenv("VLLM_MODEL_NAME", "m")
    monkeypatch.setenv("VLLM_SERVER_API_KEY", KEY)
    monkeypatch.setenv("JUDGE_MAX_CONCURRENCY", "7")
    settings = JudgeSettings.from_env()
    assert settings.base_urls == ("http://a:1/v1", "http://b:2/v1")
    assert (settings.model, settings.api_key, settings.max_concurrency) == ("m", KEY, 7)
    assert JudgeSettings.from_env(model="explicit").model == "explicit"  # explicit values win


# ---------------------------------------------------------------------------------------------- preflight


def test_preflight_asks_each_replica_once_with_the_key_and_sends_no_chat(server):
    with OpenAITestServer(models=["judge"], api_key=KEY) as second:
        assert make(f"{server.base_url},{second.base_url}").preflight_sync() is None  # no exception: both serve it
        assert server.models_requests == second.models_requests == [f"Bearer {KEY}"]
    assert server.request_count == 0 and server.requests == []  # a preflight costs no judge tokens


def test_preflight_unreachable():
    with pytest.raises(JudgeUnavailable, match="unreachable"):
        make(closed_port_url()).preflight_sync(timeout_s=2)


def test_preflight_wrong_model(server):
    with pytest.raises(JudgeUnavailable, match=r"serves \['judge'\], not the configured model 'Qwen"):
        make(server.base_url, model="Qwen/Qwen2.5-32B-Instruct").preflight_sync()


def test_preflight_checks_every_replica(server):
    with pytest.raises(JudgeUnavailable, match="unreachable"):
        make(f"{server.base_url},{closed_port_url()}").preflight_sync(timeout_s=2)


def test_preflight_wrong_key_and_the_key_never_leaks(server, caplog):
    wrong = "sk-wrong-key-4f1d9c"
    caplog.set_level(logging.DEBUG)  # every logger, including openai/httpx/aiohttp debug output
    with pytest.raises(JudgeUnavailable, match="401") as info:
        make(server.base_url, api_key=wrong).preflight_sync()
    assert wrong not in str(info.value)
    # failures of every kind, logged at debug level
    server.fail_next(3, status=500)
    client = make(server.base_url, api_key=wrong, max_retries=2)
    [error] = run_chats(client)
    refused = make(closed_port_url(), api_key=wrong, max_retries=1)
    [refused_error] = run_chats(refused)
    texts = [caplog.text, str(error), repr(error), str(refused_error), repr(client), repr(client.settings)]
    texts += [repr(refused.stats), str(vars(client.stats))]
    assert caplog.records  # something was logged, so the check below means something
    assert not [t for t in texts if wrong in t]


# ------------------------------------------------------------------------ errors that name the server (issue 11.3)


def test_a_404_names_role_url_one_real_attempt_and_the_servers_text(server):
    client = make(server.base_url, model="missing-model", max_retries=3, role="policy")
    [error] = run_chats(client)
    text = str(error)
    assert isinstance(error, JudgeError) and error.attempts == 1 and server.request_count == 1
    assert text.startswith("policy request failed after 1 attempt(s)")  # not "judge", not "4 attempt(s)"
    assert f"{server.base_url}/chat/completions" in text and "HTTP 404" in text
    assert "The model `missing-model` does not exist." in text  # the server's own message, quoted


def test_retried_errors_count_every_attempt_and_name_the_last_url(server):
    server.fail_next(10, status=503)
    [error] = run_chats(make(server.base_url, max_retries=2))
    assert error.attempts == 3 and "after 3 attempt(s)" in str(error) and "HTTP 503: injected 503" in str(error)
    assert error.status == 503 and error.url == f"{server.base_url}/chat/completions"


def test_server_text_is_truncated_and_never_carries_the_key():
    secret = "sk-echoed-back-by-a-proxy-4f1d9c"  # the model name is echoed in the 404 text, like a proxy echoing a key
    with OpenAITestServer(models=["judge"]) as open_server:
        [error] = run_chats(make(open_server.base_url, model=secret, api_key=secret, max_retries=0))
        [long_error] = run_chats(make(open_server.base_url, model="m" * 500, max_retries=0))
    assert secret not in str(error) and "The model `****` does not exist." in str(error)
    assert len(long_error.server_message) == 200 and long_error.server_message.endswith("…")


@pytest.mark.parametrize("kind", ["not_json", "no_choices"])
def test_malformed_200_is_retried_then_reported(server, kind):
    server.fail_next(1, kind=kind)
    [result] = run_chats(make(server.base_url, max_retries=2))
    assert result.text == "<info1>1</info1>" and result.attempts == 2  # one malformed answer, then a good one
    server.fail_next(10, kind=kind)
    [error] = run_chats(make(server.base_url, max_retries=1))
    assert isinstance(error, JudgeError) and error.attempts == 2 and "malformed response" in str(error)


def test_null_content_is_a_failure_not_an_empty_reply(server):
    server.fail_next(1, kind="null_content")
    [result] = run_chats(make(server.base_url, max_retries=1))
    assert result.text == "<info1>1</info1>" and result.attempts == 2
    server.fail_next(10, kind="null_content")
    [error] = run_chats(make(server.base_url, max_retries=1))
    assert isinstance(error, JudgeError) and "content: null" in str(error)


def test_usage_cached_tokens_and_finish_reason(server):
    client = make(server.base_url)
    history = [{"role": "system", "content": "You are a judge. " * 40}]

    async def go():
        try:
            first = await client.chat([*history, {"role": "user", "content": "a"}])
            second = await client.chat([*history, {"role": "user", "content": "b"}])
            cut = await client.chat(MESSAGES, max_tokens=2)
            return first, second, cut
        finally:
            await client.aclose()

    first, second, cut = asyncio.run(go())
    assert first.cached_tokens == 0 and second.cached_tokens > 0  # the shared prefix is cached the second time
    assert second.cached_tokens == server.log[1].usage["prompt_tokens_details"]["cached_tokens"]
    assert first.finish_reason == "stop" and cut.finish_reason == "length" and cut.text == "<info1>1"
    assert client.stats.cached_tokens == second.cached_tokens and client.stats.truncated == 1
    server.report_cached_tokens = False  # vLLM without --enable-prompt-tokens-details
    [plain] = run_chats(make(server.base_url))
    assert plain.cached_tokens is None  # not reported: unknown, not zero


def _unaccepting_listener():
    """A socket that listens but never accepts, with its backlog full: new connections hang in SYN."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(listener.getsockname())
        fillers.append(sock)
    return listener, fillers


def test_connect_timeout_is_separate_from_the_total_timeout():
    listener, fillers = _unaccepting_listener()
    try:
        host, port = listener.getsockname()
        client = make(f"http://{host}:{port}/v1", connect_timeout_s=0.5, timeout_s=120, max_retries=0)
        [error] = run_chats(client)
    finally:
        for sock in [*fillers, listener]:
            sock.close()
    assert isinstance(error, JudgeError) and "connect timeout (0.5 s)" in str(error)


def test_total_timeout_is_reported_as_such(server):
    server.fail_next(5, hang_s=math.inf)
    [error] = run_chats(make(server.base_url, timeout_s=1, max_retries=0))
    assert "timeout (1 s total)" in str(error)


def test_timeout_and_structured_settings_from_env(monkeypatch):
    monkeypatch.setenv("VLLM_SERVER_BASE_URL", "http://a:1")
    for name in ("JUDGE_TIMEOUT", "JUDGE_CONNECT_TIMEOUT", "JUDGE_STRUCTURED_OUTPUTS"):
        monkeypatch.delenv(name, raising=False)
    settings = JudgeSettings.from_env()
    # sized for 4096-token responses at full load (docs/judge.md): a long prompt can wait minutes for prefill
    assert (settings.timeout_s, settings.connect_timeout_s, settings.structured_outputs) == (300.0, 10.0, "auto")
    monkeypatch.setenv("JUDGE_TIMEOUT", "90")
    monkeypatch.setenv("JUDGE_CONNECT_TIMEOUT", "3")
    monkeypatch.setenv("JUDGE_STRUCTURED_OUTPUTS", "off")
    settings = JudgeSettings.from_env()
    assert (settings.timeout_s, settings.connect_timeout_s, settings.structured_outputs) == (90.0, 3.0, "off")
    monkeypatch.setenv("JUDGE_STRUCTURED_OUTPUTS", "maybe")
    with pytest.raises(ValueError, match="structured_outputs"):
        JudgeSettings.from_env()
    with pytest.raises(ValueError, match="connect_timeout"):
        JudgeSettings(base_urls=("http://x/v1",), connect_timeout_s=0)


def test_server_version(server):
    async def version(client):
        try:
            return await client.server_version(client.settings.base_urls[0])
        finally:
            await client.aclose()

    assert asyncio.run(version(make(server.base_url))) == "0.24.0"  # GET /version at the root, not under /v1
    server.version = None
    assert asyncio.run(version(make(server.base_url))) is None


def test_preflight_errors_name_the_role(server):
    with pytest.raises(JudgeUnavailable, match=r"^distiller at http://127\.0\.0\.1:\d+/v1 serves \['judge'\]"):
        make(server.base_url, model="other", role="distiller").preflight_sync()
    with pytest.raises(JudgeUnavailable, match=r"^policy at .* rejected the API key \(HTTP 401: unauthorized\)"):
        make(server.base_url, api_key="wrong", role="policy").preflight_sync()


def test_a_judge_that_goes_down_after_n_requests():
    from perception_r1.testing.openai_server import fail_after, substring_judge

    with OpenAITestServer(models=["judge"], responder=fail_after(substring_judge, 2)) as down:
        results = [run_chats(make(down.base_url, max_retries=0))[0] for _ in range(4)]
        statuses = [r.status for r in down.log]
    assert [isinstance(r, JudgeError) for r in results] == [False, False, True, True]
    assert statuses == [200, 200, 503, 503] and "judge down after 2 requests" in str(results[-1])
