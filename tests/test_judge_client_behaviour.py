"""Promises of the judge client that mutation testing found unguarded: the default retry budget and backoff cap,
error texts that name what went wrong (and never the key), malformed answers, URL handling and settings.

Servers are real sockets: the scripted OpenAI-compatible test server, and for answers it cannot give (a 400 or a
non-JSON body on ``GET /models``) a small aiohttp app of the same kind started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import threading
from collections.abc import Callable
from contextlib import contextmanager

import aiohttp
import pytest
from aiohttp import web

from perception_r1.judge import client as client_module
from perception_r1.judge.client import (
    HTTPStatusError,
    JudgeClient,
    JudgeError,
    JudgeSettings,
    JudgeUnavailable,
    MalformedCompletion,
    _describe,
    _error_message,
    _int,
    _parse_completion,
    _scrub,
)
from perception_r1.testing import OpenAITestServer

KEY = "test-secret-key"
MESSAGES = [{"role": "user", "content": "hello"}]
REPLY = "<info1>1</info1>"


@pytest.fixture
def server():
    with OpenAITestServer(models=["judge"], api_key=KEY, responder=lambda req: REPLY) as s:
        yield s


def settings_for(url: str, **kw) -> JudgeSettings:
    kw.setdefault("api_key", KEY)
    kw.setdefault("model", "judge")
    return JudgeSettings(base_urls=JudgeSettings.split_urls(url), **kw)


def chat_once(settings: JudgeSettings, **params):
    client = JudgeClient(settings)

    async def go():
        try:
            return await client.chat(MESSAGES, **params)
        except JudgeError as exc:
            return exc
        finally:
            await client.aclose()

    return asyncio.run(go()), client


@pytest.fixture
def sleeps(monkeypatch):
    """The backoff delays the client asks for (jitter pinned to its top, 1.0x; no real waiting)."""
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay, *args, **kwargs):
        if delay:
            asked.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(client_module.random, "random", lambda: 1.0)
    monkeypatch.setattr(client_module.asyncio, "sleep", recording_sleep)
    return asked


# ------------------------------------------------------------------------ retry budget and backoff (defaults)


def test_default_budget_is_three_retries(server):
    server.fail_next(3, status=503)
    result, client = chat_once(settings_for(server.base_url, backoff_s=0.001))
    assert result.text == REPLY and result.attempts == 4 and client.stats.retries == 3
    server.fail_next(4, status=503)
    error, client = chat_once(settings_for(server.base_url, backoff_s=0.001))
    assert isinstance(error, JudgeError) and error.attempts == 4 and client.stats.failures == 1


def test_default_backoff_doubles_from_half_a_second_and_is_capped_at_eight(server, sleeps):
    server.fail_next(3, status=503)
    result, _ = chat_once(settings_for(server.base_url))
    assert result.attempts == 4 and sleeps == [0.5, 1.0, 2.0]
    sleeps.clear()
    server.fail_next(7, status=503)
    result, _ = chat_once(settings_for(server.base_url, max_retries=7))
    assert result.attempts == 8 and sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_jitter_waits_between_half_and_all_of_the_backoff(server, monkeypatch):
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay, *args, **kwargs):
        if delay:
            asked.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(client_module.asyncio, "sleep", recording_sleep)
    monkeypatch.setattr(client_module.random, "random", lambda: 0.0)
    server.fail_next(2, status=503)
    chat_once(settings_for(server.base_url, backoff_s=2.0, backoff_max_s=3.0))
    assert asked == [1.0, 1.5]  # half of min(3, 2 * 2**k)


def test_the_last_attempt_is_not_followed_by_a_wait(server, sleeps):
    server.fail_next(10, status=503)
    error, _ = chat_once(settings_for(server.base_url, max_retries=2))
    assert isinstance(error, JudgeError) and error.attempts == 3 and sleeps == [0.5, 1.0]


def test_client_reports_usage_and_counts_every_token(server):
    result, client = chat_once(settings_for(server.base_url))
    record = server.log[0]
    assert result.prompt_tokens == record.usage["prompt_tokens"] > 0
    assert result.completion_tokens == record.usage["completion_tokens"] > 0
    assert client.stats.prompt_tokens == result.prompt_tokens
    assert client.stats.completion_tokens == result.completion_tokens
    assert client.stats.requests == 1 and client.stats.truncated == 0 and client.stats.cached_tokens == 0
    assert result.url == f"{server.base_url}/chat/completions" and result.finish_reason == "stop"


def test_one_client_serves_two_event_loops(server):
    client = JudgeClient(settings_for(server.base_url))

    async def one():
        return await client.chat(MESSAGES)

    first = asyncio.run(one())  # the first loop ends without aclose: its session is left behind, not reused
    second = asyncio.run(one())
    assert first.text == second.text == REPLY


def test_a_closed_session_is_replaced(server):
    client = JudgeClient(settings_for(server.base_url))

    async def go():
        first = await client.chat(MESSAGES)
        session, _ = client._session()
        await session.close()
        second = await client.chat(MESSAGES)
        await client.aclose()
        return first, second

    first, second = asyncio.run(go())
    assert first.text == second.text == REPLY


# -------------------------------------------------------------------------------------- completions parsing


def test_a_body_without_choices_names_what_it_got():
    with pytest.raises(MalformedCompletion, match=r"no choices; got \['a', 'b', 'c', 'd', 'e', 'f'\]\)"):
        _parse_completion({k: 1 for k in "gfedcba"})  # sorted, the first six keys
    with pytest.raises(MalformedCompletion, match=r"no choices; got list\)"):
        _parse_completion(["choices"])
    with pytest.raises(MalformedCompletion, match="no choices"):
        _parse_completion({"choices": []})


@pytest.mark.parametrize(
    "choice, content",
    [("text", None), ({"message": "hi"}, None), ({"message": {"content": 3}}, 3), ({"finish_reason": "stop"}, None)],
)
def test_a_choice_without_text_is_malformed_and_says_what_content_was(choice, content):
    with pytest.raises(MalformedCompletion, match=rf"the reply has no text \(content: {json.dumps(content)}, "):
        _parse_completion({"choices": [choice]})


def test_finish_reason_and_usage_of_unexpected_types_are_dropped():
    assert _parse_completion({"choices": [{"message": {"content": "x"}, "finish_reason": 7}], "usage": "n/a"}) == (
        "x",
        None,
        {},
    )
    usage = {"prompt_tokens": 3}
    assert _parse_completion(
        {"choices": [{"message": {"content": ""}, "finish_reason": "length"}], "usage": usage}
    ) == (
        "",
        "length",
        usage,
    )


def test_token_counts_that_are_not_numbers_count_zero():
    assert [_int(v) for v in (None, "abc", [1], "7", 7.9)] == [0, 0, 0, 7, 7]


def test_a_server_without_usage_gives_zero_tokens_not_an_error(server, monkeypatch):
    result, client = chat_once(settings_for(server.base_url))
    assert result.cached_tokens == 0  # the test server reports cached tokens
    assert client_module._cached_tokens({"prompt_tokens_details": {"cached_tokens": None}}) is None
    assert client_module._cached_tokens({"prompt_tokens_details": {"cached_tokens": "12"}}) == 12
    assert client_module._cached_tokens({"prompt_tokens_details": 5}) is None


# ------------------------------------------------------------------------------------- error texts and scrubbing


def test_http_status_error_text():
    assert str(HTTPStatusError(500)) == "HTTP 500" and HTTPStatusError(500).message == ""
    assert str(HTTPStatusError(429, "slow down")) == "HTTP 429: slow down"


def test_judge_error_defaults_say_nothing_was_tried():
    error = JudgeError("boom")
    assert (error.attempts, error.url, error.status, error.server_message) == (0, None, None, "")


@pytest.mark.parametrize(
    "payload, message",
    [
        (b'{"error": {"message": "bad  model\\n name"}}', "bad model name"),  # OpenAI's shape, one line
        (b'{"error": {"code": 1}}', '{"error": {"code": 1}}'),  # no message anywhere: the raw body, not ""
        (b'{"status": "down  for\nmaintenance"}', '{"status": "down for maintenance"}'),
        (b'{"detail": "Not Found"}', "Not Found"),  # FastAPI's
        (b'{"detail": {"message": "nested"}}', "nested"),
        (b'{"message": "top level"}', "top level"),  # neither: the body's own message
        (b'["a", "b"]', "['a', 'b']"),
        (b"<html>502 Bad\n Gateway</html>", "<html>502 Bad Gateway</html>"),  # not JSON: the raw text
        (b"\xff\xfeoops", "\ufffd\ufffdoops"),  # not UTF-8: replaced, never an exception
    ],
)
def test_the_servers_own_error_text_is_read_from_every_shape(payload, message):
    assert _error_message(payload) == message


def test_scrub_hides_the_key_and_shortens():
    assert _scrub("key sk-abcd here", "sk-abcd") == "key **** here"
    assert _scrub("abcd1", "abcd") == "****1"  # four characters are enough to be a key
    assert _scrub("abc1", "abc") == "abc1"  # shorter is not scrubbed (it would mangle every message)
    assert _scrub("EMPTY x", "EMPTY") == "EMPTY x"  # the no-key placeholder is not a secret
    assert _scrub("x" * 200, "") == "x" * 200  # exactly the limit: kept whole
    assert _scrub("x" * 201, "") == "x" * 199 + "…"
    assert _scrub("y" * 50, "", limit=10) == "y" * 9 + "…"


def test_describe_names_each_kind_of_failure():
    settings = JudgeSettings(base_urls=("http://x/v1",), api_key="sk-secret", timeout_s=42, connect_timeout_s=3)
    assert _describe(HTTPStatusError(503), settings) == "HTTP 503"
    assert _describe(HTTPStatusError(400, "bad sk-secret"), settings) == "HTTP 400: bad ****"
    assert _describe(HTTPStatusError(400, "bad sk-secret")) == "HTTP 400: bad sk-secret"  # no settings: no key known
    assert _describe(aiohttp.ConnectionTimeoutError(), settings) == "connect timeout (3 s)"
    assert _describe(aiohttp.ServerTimeoutError(), settings) == "timeout (42 s total)"
    assert _describe(asyncio.TimeoutError(), settings) == "timeout (42 s total)"
    assert _describe(asyncio.TimeoutError()) == "timeout"
    assert (
        _describe(ConnectionRefusedError(errno.ECONNREFUSED, "x"), settings) == "connection error (Connection refused)"
    )
    assert _describe(OSError("no  route\nto sk-secret"), settings) == "connection error (no route to ****)"
    assert _describe(OSError(), settings) == "connection error"
    assert _describe(OSError(0, "zero errno"), settings) == "connection error ([Errno 0] zero errno)"
    assert _describe(OSError(errno.EPERM, "x"), settings) == "connection error (Operation not permitted)"  # errno 1
    assert _describe(aiohttp.ServerDisconnectedError(), settings) == "connection error (Server disconnected)"
    assert _describe(aiohttp.ConnectionTimeoutError()) == "timeout"  # no settings: no limit to name
    assert _describe(OSError("z" * 300), settings) == "connection error (" + "z" * 119 + "…)"
    assert _describe(ValueError("not JSON sk-secret"), settings) == "malformed response (not JSON ****)"
    assert _describe(ValueError("v" * 300), settings) == "malformed response (" + "v" * 159 + "…)"
    assert _describe(ValueError(), settings) == "malformed response"
    assert _describe(KeyError("k"), settings) == "KeyError"
    assert _describe(None) == "NoneType"


def test_a_connector_error_names_the_os_cause(server):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error, _ = chat_once(settings_for(f"http://127.0.0.1:{port}", max_retries=0))
    assert isinstance(error, JudgeError) and str(error).endswith("connection error (Connection refused)")


def test_the_error_of_a_failed_call_carries_status_and_scrubbed_server_text():
    secret = "sk-echoed-1234"
    with OpenAITestServer(models=["judge"]) as open_server:
        error, _ = chat_once(settings_for(open_server.base_url, model=secret, api_key=secret, max_retries=0))
    assert error.status == 404 and error.server_message == "The model `****` does not exist."
    with OpenAITestServer(models=["judge"]) as open_server:
        open_server.fail_next(1, hang_s=0, kind="not_json")
        error, _ = chat_once(settings_for(open_server.base_url, max_retries=0))
    assert error.status is None and error.server_message == "" and "malformed response" in str(error)


# ------------------------------------------------------------------------------------------ URLs and settings


def test_split_urls_accepts_lists_https_and_skips_blanks():
    assert JudgeSettings.split_urls(["https://a:1/", " http://b:2/v1 "]) == ("https://a:1/v1", "http://b:2/v1")
    assert JudgeSettings.split_urls("http://a:1,,http://b:2") == ("http://a:1/v1", "http://b:2/v1")  # blank skipped
    assert JudgeSettings.split_urls("http://a:1//") == ("http://a:1/v1",)
    assert JudgeSettings.split_urls("https://gw/v1beta/openai/") == ("https://gw/v1beta/openai",)
    with pytest.raises(ValueError, match="'ftp://a' must start with http:// or https://"):
        JudgeSettings.split_urls("ftp://a")


def test_from_env_defaults_and_overrides(monkeypatch):
    for name in ("VLLM_SERVER_API_KEY", "VLLM_MODEL_NAME", "JUDGE_MAX_CONCURRENCY", "JUDGE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    settings = JudgeSettings.from_env(base_url="http://a:1")
    assert settings.api_key == "EMPTY" and settings.model == "Qwen/Qwen2.5-32B-Instruct"
    assert (settings.max_concurrency, settings.max_retries, settings.backoff_max_s) == (64, 3, 8.0)
    settings = JudgeSettings.from_env(base_url="http://a:1", max_retries=0, role=None, timeout_s=5, max_concurrency=2)
    assert (settings.max_retries, settings.role, settings.timeout_s, settings.max_concurrency) == (0, "judge", 5.0, 2)
    assert JudgeSettings.from_env(base_url="  ") is None


def test_with_changes_only_the_named_fields():
    settings = JudgeSettings(base_urls=("http://a/v1",), model="m")
    changed = settings.with_(max_retries=0, role="policy")
    assert (changed.max_retries, changed.role, changed.model, changed.base_urls) == (0, "policy", "m", ("http://a/v1",))
    assert settings.max_retries == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"timeout_s": 0}, "judge timeout must be > 0 seconds, got 0"),
        ({"connect_timeout_s": -1}, "judge connect_timeout must be > 0 seconds, got -1"),
        ({"max_concurrency": 0, "role": "policy"}, "policy max_concurrency must be >= 1, got 0"),
        ({"structured_outputs": "yes"}, "structured_outputs must be one of auto, on, off"),
    ],
)
def test_bad_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        JudgeSettings(base_urls=("http://a/v1",), **kwargs)


def test_settings_at_their_minimum_are_accepted():
    JudgeSettings(base_urls=("http://a/v1",), max_concurrency=1, timeout_s=0.01, connect_timeout_s=0.01)


# ------------------------------------------------------------------------ preflight and version, odd servers


@contextmanager
def raw_server(routes: dict[str, tuple[int, bytes, str] | Callable]):
    """A real aiohttp server on 127.0.0.1 answering ``GET <path>`` with a fixed ``(status, body, content type)``,
    or with an aiohttp handler of its own (for a server that answers late)."""
    app = web.Application()
    for path, answer in routes.items():
        if callable(answer):
            app.router.add_get(path, answer)
            continue
        status, body, ctype = answer

        async def handler(request, status=status, body=body, ctype=ctype):
            return web.Response(status=status, body=body, content_type=ctype)

        app.router.add_get(path, handler)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def preflight(url: str, **kw):
    JudgeClient(settings_for(url, **kw)).preflight_sync(timeout_s=20)


def test_preflight_reports_a_400_with_the_servers_text():
    body = json.dumps({"error": {"message": "bad request sk-key-9999"}}).encode()
    with raw_server({"/v1/models": (400, body, "application/json")}) as root:
        with pytest.raises(JudgeUnavailable) as info:
            preflight(root, api_key="sk-key-9999")
    assert str(info.value) == f"judge at {root}/v1 answered GET /models with HTTP 400: bad request ****"


def test_preflight_reports_an_error_without_text_and_a_401_as_the_key():
    with raw_server({"/v1/models": (500, b"", "text/plain")}) as root:
        with pytest.raises(JudgeUnavailable) as info:
            preflight(root)
    assert str(info.value) == f"judge at {root}/v1 answered GET /models with HTTP 500"
    with raw_server({"/v1/models": (401, b'{"error": {"message": "no"}}', "application/json")}) as root:
        with pytest.raises(JudgeUnavailable) as info:
            preflight(root)
    assert str(info.value) == f"judge at {root}/v1 rejected the API key (HTTP 401: no)"


@pytest.mark.parametrize("body", [b"<html>hi</html>", b'["judge"]', b"{}"])
def test_preflight_without_a_model_list(body):
    with raw_server({"/v1/models": (200, body, "application/json")}) as root:
        with pytest.raises(JudgeUnavailable) as info:
            preflight(root)
    text = str(info.value)
    assert text in (
        f"judge at {root}/v1 did not answer GET /models with a model list",
        f"judge at {root}/v1 serves no models, not the configured model 'judge'",
    )
    if body == b"{}":
        assert "serves no models" in text
    else:
        assert "did not answer" in text


def test_preflight_unreachable_names_the_cause():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(JudgeUnavailable) as info:
        preflight(f"http://127.0.0.1:{port}")
    assert (
        str(info.value) == f"judge at http://127.0.0.1:{port}/v1 is unreachable (connection error (Connection refused))"
    )


@pytest.mark.parametrize(
    "version, expected", [("0.11.0", "0.11.0"), ("  ", None), (123, None), (None, None), ("", None)]
)
def test_server_version_is_a_non_blank_string_or_none(version, expected):
    body = json.dumps({"version": version} if version is not None else ["0.1"]).encode()
    with raw_server({"/version": (200, body, "application/json")}) as root:
        client = JudgeClient(settings_for(root))
        assert asyncio.run(client.server_version(root + "/v1")) == expected


def test_server_version_of_a_gateway_path_is_not_asked():
    with raw_server({"/v1beta/version": (200, b'{"version": "9.9.9"}', "application/json")}) as root:
        client = JudgeClient(settings_for(root))
        assert asyncio.run(client.server_version(root + "/v1beta")) is None


def test_server_version_not_200_or_not_json_is_none():
    with raw_server({"/version": (500, b'{"version": "1.0"}', "application/json")}) as root:
        assert asyncio.run(JudgeClient(settings_for(root)).server_version(root + "/v1")) is None
    with raw_server({"/version": (200, b"<html>", "text/html")}) as root:
        assert asyncio.run(JudgeClient(settings_for(root)).server_version(root + "/v1")) is None


def test_the_connection_pool_is_as_large_as_the_concurrency(server):
    """aiohttp's default pool holds 100 connections: a client allowed 120 requests in flight must have them all."""
    server.latency_s = 5.0  # every request waits here, so all 120 are in flight together (local connects are fast)
    client = JudgeClient(settings_for(server.base_url, max_concurrency=120))

    async def go():
        try:
            return await asyncio.gather(*(client.chat(MESSAGES) for _ in range(120)))
        finally:
            await client.aclose()

    results = asyncio.run(go())
    assert all(r.text == REPLY for r in results) and server.max_in_flight > 100


def test_a_preflight_that_times_out_names_its_own_limit():
    async def slow(request):
        await asyncio.sleep(4)
        return web.json_response({"data": [{"id": "judge"}]})

    with raw_server({"/v1/models": slow}) as url:
        client = JudgeClient(settings_for(url, timeout_s=300))
        with pytest.raises(JudgeUnavailable) as info:
            client.preflight_sync(timeout_s=1)
    # the preflight's own 1 s, not the 300 s a chat request may take
    assert str(info.value) == f"judge at {url}/v1 is unreachable (timeout (1 s total))"


@contextmanager
def silent_server(backlog_full: bool = False):
    """A TCP port that never answers HTTP: it accepts connections and says nothing, or (``backlog_full``) its
    accept queue is full, so the kernel drops new SYNs and a connect hangs until the client's connect timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            if backlog_full:
                for _ in range(3):  # listen(0) queues one; the rest wait in SYN_SENT
                    filler = socket.socket()
                    filler.setblocking(False)
                    filler.connect_ex(("127.0.0.1", port))
                    fillers.append(filler)
            yield f"http://127.0.0.1:{port}"
        finally:
            for filler in fillers:
                filler.close()


def test_preflight_names_a_connect_timeout_when_a_server_never_accepts():
    with silent_server(backlog_full=True) as root:
        client = JudgeClient(settings_for(root, connect_timeout_s=1.0))
        with pytest.raises(JudgeUnavailable) as info:
            client.preflight_sync(timeout_s=60)  # the connect limit applies, not only the total
    assert str(info.value) == f"judge at {root}/v1 is unreachable (connect timeout (1 s))"


def test_preflight_gives_up_after_10_s_by_default_on_a_server_that_never_answers():
    """Launchers and the CLI call ``preflight_sync()``: a hung judge costs 10 s before any GPU work, not minutes."""
    with silent_server() as root:
        with pytest.raises(JudgeUnavailable) as info:
            JudgeClient(settings_for(root)).preflight_sync()
    assert str(info.value) == f"judge at {root}/v1 is unreachable (timeout (10 s total))"


def test_server_version_sends_the_key_for_a_gateway_that_guards_every_path():
    async def guarded(request):
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": {"message": "unauthorized"}}, status=401)
        return web.json_response({"version": "0.24.0"})

    with raw_server({"/version": guarded}) as root:
        assert asyncio.run(JudgeClient(settings_for(root)).server_version(root + "/v1")) == "0.24.0"


def test_server_version_gives_up_on_a_server_that_never_answers_or_never_accepts():
    """Each limit is its own: the total (a server that accepts and stays silent) and the connect timeout (one whose
    accept queue is full). A 1 s limit that is not applied leaves the call waiting on the other one (300 or 600 s),
    which the generous 120 s guard turns into a failure."""

    def version(root: str, timeout_s: float, **kw) -> str | None:
        client = JudgeClient(settings_for(root, **kw))
        return asyncio.run(asyncio.wait_for(client.server_version(root + "/v1", timeout_s=timeout_s), 120))

    with silent_server() as root:
        assert version(root, timeout_s=1) is None
    with silent_server(backlog_full=True) as root:
        assert version(root, timeout_s=600, connect_timeout_s=1.0) is None


# ------------------------------------------------------------------ what a request carries, what the stats add up


def test_a_request_is_json_with_the_key_and_the_configured_temperature(server):
    server.record = True
    result, _ = chat_once(settings_for(server.base_url, temperature=0.3))
    headers = {k.lower(): v for k, v in server.headers[0].items()}
    assert headers["content-type"].lower() == "application/json"  # vLLM's FastAPI parses the body by this type
    assert headers["authorization"] == f"Bearer {KEY}"
    assert server.requests[0]["temperature"] == 0.3 and result.text == REPLY
    assert 0 <= result.latency_s < 60  # seconds since the call began, not a clock reading


def test_stats_add_up_over_calls(server):
    client = JudgeClient(settings_for(server.base_url, backoff_s=0.001, max_retries=0, max_tokens=2))

    async def go():
        try:
            results = [await client.chat(MESSAGES) for _ in range(2)]
            server.fail_next(2, status=503)
            for _ in range(2):
                with pytest.raises(JudgeError):
                    await client.chat(MESSAGES)
            return results
        finally:
            await client.aclose()

    first, second = asyncio.run(go())
    assert first.finish_reason == second.finish_reason == "length"  # a 2-token budget truncates the reply
    assert client.stats.prompt_tokens == first.prompt_tokens + second.prompt_tokens > first.prompt_tokens
    assert client.stats.completion_tokens == first.completion_tokens + second.completion_tokens
    assert client.stats.truncated == 2 and client.stats.failures == 2 and client.stats.requests == 4


def test_a_retry_moves_on_to_the_next_replica_in_order():
    with contextlib.ExitStack() as stack:
        # three bound ports nobody listens on, held for the test so they are distinct: every attempt is refused
        socks = [stack.enter_context(socket.socket()) for _ in range(3)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        ports = [sock.getsockname()[1] for sock in socks]
        urls = ",".join(f"http://127.0.0.1:{port}/v1" for port in ports)
        error, _ = chat_once(settings_for(urls, max_retries=1, backoff_s=0.001))
    assert isinstance(error, JudgeError) and error.attempts == 2
    assert error.url == f"http://127.0.0.1:{ports[1]}/v1/chat/completions"  # first, then the next one


def test_aclose_closes_the_pool_of_the_running_loop(server):
    client = JudgeClient(settings_for(server.base_url))

    async def go():
        await client.chat(MESSAGES)
        session, _ = client._session()
        await client.aclose()
        await client.aclose()  # twice is fine: nothing left to close
        return session

    session = asyncio.run(go())
    assert session.closed and client._per_loop == {}
