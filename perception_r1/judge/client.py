"""The judge client: one async client per process for OpenAI-compatible servers (vLLM), shared by every caller.

It speaks the OpenAI HTTP API (``GET /models``, ``POST /chat/completions``) over one pooled aiohttp session per
event loop. We measured the ``openai`` SDK at 2.1 ms CPU per request on its aiohttp transport and 0.8 ms through
its generic ``post``, against ~0.2 ms here: at 4096 judged rows per GRPO step that is seconds of a reward worker's
CPU (docs/benchmarks.md), so the hot path talks HTTP directly. Bounded concurrency, separate connect and total
timeouts per request, retries with exponential backoff on connection errors, timeouts, 429, 5xx and malformed 200
answers, and round-robin over replicas (a comma-separated list of base URLs). After the retry budget a call raises
:class:`JudgeError`, whose message names the endpoint's role (``judge``, ``policy``, ``distiller``...), the URL,
the attempts really made and the server's own error text; callers decide the failure policy (the reward turns it
into ``visual = 0, judge_failed = 1``). The API key is held out of ``repr`` and scrubbed from every message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

ENV_BASE_URL = "VLLM_SERVER_BASE_URL"
ENV_API_KEY = "VLLM_SERVER_API_KEY"
ENV_MODEL = "VLLM_MODEL_NAME"
ENV_MAX_CONCURRENCY = "JUDGE_MAX_CONCURRENCY"
ENV_TIMEOUT = "JUDGE_TIMEOUT"
ENV_CONNECT_TIMEOUT = "JUDGE_CONNECT_TIMEOUT"
ENV_STRUCTURED_OUTPUTS = "JUDGE_STRUCTURED_OUTPUTS"
DEFAULT_JUDGE_MODEL = "Qwen/Qwen2.5-32B-Instruct"
STRUCTURED_MODES = ("auto", "on", "off")
SERVER_MESSAGE_CHARS = 200


class JudgeError(RuntimeError):
    """A request failed after its retry budget (or with a non-retryable error).

    Attributes: ``attempts`` really made, the last ``url`` tried, the HTTP ``status`` (``None`` when there was no
    HTTP answer) and the server's ``server_message`` (shortened, the API key scrubbed).
    """

    def __init__(
        self,
        message: str,
        attempts: int = 0,
        url: str | None = None,
        status: int | None = None,
        server_message: str = "",
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.url = url
        self.status = status
        self.server_message = server_message


class JudgeUnavailable(JudgeError):
    """The preflight found no usable judge: unreachable, or not serving the configured model."""


class MalformedCompletion(ValueError):
    """The server answered 2xx with a body that is not a chat completion (retried like a 5xx)."""


def _parse_completion(body: Any) -> tuple[str, str | None, dict[str, Any]]:
    """``(text, finish_reason, usage)`` from a chat-completion JSON body; :class:`MalformedCompletion` when it is not
    one, or when its message has no text (``content: null``: a reply with nothing to read is not an empty verdict)."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
        keys = sorted(body)[:6] if isinstance(body, dict) else type(body).__name__
        raise MalformedCompletion(f"not a chat completion (no choices; got {keys})")
    choice = body["choices"][0]
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    finish_reason = choice.get("finish_reason") if isinstance(choice, dict) else None
    if not isinstance(content, str):
        raise MalformedCompletion(
            f"the reply has no text (content: {json.dumps(content)}, finish_reason={finish_reason})"
        )
    usage = body.get("usage")
    return content, finish_reason if isinstance(finish_reason, str) else None, usage if isinstance(usage, dict) else {}


def _cached_tokens(usage: dict[str, Any]) -> int | None:
    """vLLM's ``prompt_tokens_details.cached_tokens`` (``--enable-prompt-tokens-details``); ``None`` if absent."""
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict) or details.get("cached_tokens") is None:
        return None
    return _int(details.get("cached_tokens"))


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class JudgeSettings:
    """Where an OpenAI-compatible endpoint is and how to talk to it. ``api_key`` is excluded from ``repr``.

    ``role`` names the endpoint in every error (``judge``; ``policy`` for ``eval run``; ``distiller`` /
    ``extractor`` for ``annotate``). ``timeout_s`` bounds a whole request once it has a connection (the server's
    queueing, prefill and decode: sized for a 4096-token response judged at full load, see docs/judge.md);
    ``connect_timeout_s`` bounds the TCP connect alone, so a dead host fails fast. ``structured_outputs``: ``auto``
    (constrain the judge's replies when the server supports vLLM's ``structured_outputs``), ``on`` or ``off``.
    """

    base_urls: tuple[str, ...]
    model: str = DEFAULT_JUDGE_MODEL
    api_key: str = field(default="EMPTY", repr=False)
    max_concurrency: int = 64
    timeout_s: float = 300.0
    connect_timeout_s: float = 10.0
    max_retries: int = 3
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    temperature: float = 0.0
    max_tokens: int = 512
    role: str = "judge"
    structured_outputs: str = "auto"

    def __post_init__(self) -> None:
        if not self.base_urls:
            raise ValueError(f"{self.role} base URL is empty: set --judge-base-url or VLLM_SERVER_BASE_URL")
        if self.max_concurrency < 1:
            raise ValueError(f"{self.role} max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.timeout_s <= 0:
            raise ValueError(f"{self.role} timeout must be > 0 seconds, got {self.timeout_s}")
        if self.connect_timeout_s <= 0:
            raise ValueError(f"{self.role} connect_timeout must be > 0 seconds, got {self.connect_timeout_s}")
        if self.structured_outputs not in STRUCTURED_MODES:
            raise ValueError(
                f"{self.role} structured_outputs must be one of {', '.join(STRUCTURED_MODES)} "
                f"({ENV_STRUCTURED_OUTPUTS}), got {self.structured_outputs!r}"
            )

    @staticmethod
    def split_urls(value: str | Sequence[str]) -> tuple[str, ...]:
        """``"http://a:8000/v1,http://b:8000"`` -> a tuple of URLs (``/v1`` is added to a URL without a path;
        other paths, e.g. ``.../v1beta/openai``, are kept)."""
        items = value.split(",") if isinstance(value, str) else list(value)
        urls = []
        for item in items:
            url = item.strip().rstrip("/")
            if not url:
                continue
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"judge base URL {url!r} must start with http:// or https://")
            if urlsplit(url).path in ("", "/"):  # a bare host: vLLM serves the API under /v1
                url += "/v1"
            urls.append(url)
        return tuple(urls)

    @classmethod
    def from_env(
        cls,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        max_concurrency: int | None = None,
        timeout_s: float | None = None,
        **overrides: Any,
    ) -> JudgeSettings | None:
        """Settings from explicit values, falling back to the launcher's env vars; ``None`` when no URL is set."""
        url = base_url or os.environ.get(ENV_BASE_URL, "")
        if not url.strip():
            return None
        kwargs: dict[str, Any] = {
            "base_urls": cls.split_urls(url),
            "model": model or os.environ.get(ENV_MODEL) or DEFAULT_JUDGE_MODEL,
            "api_key": api_key or os.environ.get(ENV_API_KEY) or "EMPTY",
        }
        concurrency = max_concurrency or os.environ.get(ENV_MAX_CONCURRENCY)
        if concurrency:
            kwargs["max_concurrency"] = int(concurrency)
        timeout = timeout_s or os.environ.get(ENV_TIMEOUT)
        if timeout:
            kwargs["timeout_s"] = float(timeout)
        connect = os.environ.get(ENV_CONNECT_TIMEOUT)
        if connect:
            kwargs["connect_timeout_s"] = float(connect)
        structured = os.environ.get(ENV_STRUCTURED_OUTPUTS)
        if structured:
            kwargs["structured_outputs"] = structured.strip().lower()
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    def with_(self, **changes: Any) -> JudgeSettings:
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass
class ChatResult:
    """One successful completion. ``cached_tokens`` is ``None`` when the server does not report it;
    ``finish_reason`` ``"length"`` means the reply was cut at ``max_tokens``."""

    text: str
    latency_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    cached_tokens: int | None = None
    finish_reason: str | None = None
    url: str = ""


@dataclass
class JudgeStats:
    """Counters for logs and metrics (never holds secrets)."""

    requests: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    truncated: int = 0


class HTTPStatusError(Exception):
    """A non-2xx answer (its body's error message shortened; never the request, which may carry secrets)."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(f"HTTP {status}" + (f": {message}" if message else ""))
        self.status = status
        self.message = message


def _error_message(payload: bytes) -> str:
    """The server's own error text (OpenAI ``error.message``, FastAPI ``detail``, or the raw body), one line."""
    try:
        body = json.loads(payload)
        error = body.get("error", body.get("detail", body)) if isinstance(body, dict) else body
        message = error.get("message") if isinstance(error, dict) else str(error)
    except ValueError:
        message = None  # pragma: no mutate (equivalent: any false value means "no message")
    if not message:  # not JSON, or JSON without a message anywhere: the body as it came
        message = payload.decode(errors="replace")  # UTF-8
    return " ".join(str(message).split())


def _scrub(text: str, secret: str, limit: int = SERVER_MESSAGE_CHARS) -> str:
    """``text`` without the API key, at most ``limit`` characters (a proxy may echo a key back)."""
    if secret and secret != "EMPTY" and len(secret) >= 4:
        text = text.replace(secret, "****")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_retryable(exc: BaseException) -> bool:
    import aiohttp

    if isinstance(exc, HTTPStatusError):
        return exc.status == 429 or exc.status >= 500
    # connection refused/reset, server disconnects, timeouts, and 2xx bodies that are not completions
    return isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError))


def _describe(exc: BaseException | None, settings: JudgeSettings | None = None) -> str:
    """One short phrase for an error: what kind, plus the server's text (scrubbed) where there is one."""
    import aiohttp

    # equivalent mutants: without settings no key is known; a placeholder absent from the text scrubs nothing
    key = settings.api_key if settings is not None else ""  # pragma: no mutate
    if isinstance(exc, HTTPStatusError):
        return f"HTTP {exc.status}" + (f": {_scrub(exc.message, key)}" if exc.message else "")
    if isinstance(exc, (aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError)) and settings is not None:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return f"connect timeout ({settings.connect_timeout_s:g} s)"
    if isinstance(exc, asyncio.TimeoutError):
        return f"timeout ({settings.timeout_s:g} s total)" if settings is not None else "timeout"
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        errno = getattr(exc, "errno", None)  # aiohttp's connector errors carry their OS error's
        detail = os.strerror(errno) if isinstance(errno, int) and errno > 0 else " ".join(str(exc).split())
        detail = _scrub(detail, key, 120)
        return "connection error" + (f" ({detail})" if detail else "")
    if isinstance(exc, ValueError):
        return "malformed response" + (f" ({_scrub(str(exc), key, 160)})" if str(exc) else "")
    return type(exc).__name__


class JudgeClient:
    """Async chat completions against one or more OpenAI-compatible servers.

    Create one per process and share it: it keeps one pooled HTTP session per event loop (keep-alive connections
    to every replica), a semaphore of ``max_concurrency`` per event loop, and cumulative :class:`JudgeStats`.
    """

    def __init__(self, settings: JudgeSettings) -> None:
        self.settings = settings
        self.stats = JudgeStats()
        self._per_loop: dict[int, tuple[Any, asyncio.Semaphore]] = {}
        self._rr = itertools.count()
        self._headers = {"Authorization": f"Bearer {settings.api_key}", "Content-Type": "application/json"}

    def __repr__(self) -> str:
        return f"JudgeClient(base_urls={self.settings.base_urls!r}, model={self.settings.model!r})"

    def _session(self) -> tuple[Any, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        state = self._per_loop.get(id(loop))
        if state is None or state[0].closed:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.settings.max_concurrency, ttl_dns_cache=300)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=self.settings.timeout_s, sock_connect=self.settings.connect_timeout_s
                ),
                headers=self._headers,
                raise_for_status=False,
            )
            state = (session, asyncio.Semaphore(self.settings.max_concurrency))
            self._per_loop[id(loop)] = state
        return state

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """One chat completion with retries; raises :class:`JudgeError` after the retry budget.

        ``params`` go into the request body as they are (``max_tokens``, ``response_format``, vLLM's
        ``structured_outputs``/``top_k``, ...).
        """
        session, semaphore = self._session()
        settings = self.settings
        request = {
            "model": settings.model,
            "messages": messages,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            **params,
        }
        body = json.dumps(request, ensure_ascii=False).encode("utf-8")
        last: BaseException | None = None
        start = time.perf_counter()
        first = next(self._rr)  # round-robin start; each retry moves on to the next replica
        urls = self.settings.base_urls
        attempts = 0
        url = ""
        async with semaphore:
            for attempt in range(settings.max_retries + 1):
                url = urls[(first + attempt) % len(urls)] + "/chat/completions"
                self.stats.requests += 1
                attempts += 1
                try:
                    async with session.post(url, data=body) as response:
                        payload = await response.read()
                        if response.status >= 400:
                            raise HTTPStatusError(response.status, _error_message(payload))
                    text, finish_reason, usage = _parse_completion(json.loads(payload))
                except Exception as exc:
                    last = exc
                    if not _is_retryable(exc) or attempt == settings.max_retries:
                        break
                    self.stats.retries += 1
                    delay = min(settings.backoff_max_s, settings.backoff_s * 2**attempt)
                    await asyncio.sleep(delay * (0.5 + random.random() / 2))
                    continue
                prompt_tokens = _int(usage.get("prompt_tokens"))
                completion_tokens = _int(usage.get("completion_tokens"))
                cached_tokens = _cached_tokens(usage)
                self.stats.prompt_tokens += prompt_tokens
                self.stats.completion_tokens += completion_tokens
                self.stats.cached_tokens += cached_tokens or 0
                self.stats.truncated += finish_reason == "length"
                return ChatResult(
                    text=text,
                    latency_s=time.perf_counter() - start,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    attempts=attempts,
                    cached_tokens=cached_tokens,
                    finish_reason=finish_reason,
                    url=url,
                )
        self.stats.failures += 1
        raise self._error(last, attempts, url)

    def _error(self, exc: BaseException | None, attempts: int, url: str) -> JudgeError:
        """The one-line :class:`JudgeError` for a failed call: role, attempts really made, last URL, the cause."""
        status = exc.status if isinstance(exc, HTTPStatusError) else None
        server_message = _scrub(exc.message, self.settings.api_key) if isinstance(exc, HTTPStatusError) else ""
        return JudgeError(
            f"{self.settings.role} request failed after {attempts} attempt(s) (last: {url}): "
            f"{_describe(exc, self.settings)}",
            attempts=attempts,
            url=url,
            status=status,
            server_message=server_message,
        )

    # equivalent mutants of the default: 10 s and 11 s give the same None; only a clock could tell them apart
    async def server_version(self, base_url: str, timeout_s: float = 10.0) -> str | None:  # pragma: no mutate
        """vLLM's version from ``GET /version`` at the server root (``http://host:8000/v1`` ->
        ``http://host:8000/version``); ``None`` when the server has no such endpoint or is not reachable."""
        import aiohttp

        if not base_url.endswith("/v1"):  # a gateway path (".../v1beta/openai"): no vLLM root to ask
            return None
        root = base_url[: -len("/v1")]
        try:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=self.settings.connect_timeout_s),
                headers=self._headers,
            ) as session:
                async with session.get(root + "/version") as response:
                    if response.status != 200:
                        return None
                    body = json.loads(await response.read())
        except Exception:  # unreachable, not JSON: no version to report
            return None
        version = body.get("version") if isinstance(body, dict) else None
        return version if isinstance(version, str) and version.strip() else None

    async def preflight(self, timeout_s: float) -> None:
        """Check every replica answers ``GET /models`` and serves ``settings.model``; raise :class:`JudgeUnavailable`."""
        import aiohttp

        connect_s = min(timeout_s, self.settings.connect_timeout_s)
        # what errors name; a connect timeout past the total cannot fire first, so only the total is replaced
        limits = self.settings.with_(timeout_s=timeout_s)
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_s),
            headers=self._headers,
        ) as session:
            for url in self.settings.base_urls:
                role = self.settings.role
                try:
                    async with session.get(url + "/models") as response:
                        payload = await response.read()
                        status = response.status
                except Exception as exc:
                    raise JudgeUnavailable(f"{role} at {url} is unreachable ({_describe(exc, limits)})") from None
                if status >= 400:
                    text = _scrub(_error_message(payload), self.settings.api_key)
                    detail = f"HTTP {status}" + (f": {text}" if text else "")
                    if status == 401:
                        raise JudgeUnavailable(f"{role} at {url} rejected the API key ({detail})")
                    raise JudgeUnavailable(f"{role} at {url} answered GET /models with {detail}")
                try:
                    data = json.loads(payload).get("data", [])
                    served = [m.get("id") for m in data if isinstance(m, dict)]
                except (ValueError, AttributeError):
                    raise JudgeUnavailable(f"{role} at {url} did not answer GET /models with a model list") from None
                if self.settings.model not in served:
                    raise JudgeUnavailable(
                        f"{role} at {url} serves {served or 'no models'}, not the configured model "
                        f"{self.settings.model!r}"
                    )

    def preflight_sync(self, timeout_s: float = 10.0) -> None:
        """:meth:`preflight` for synchronous callers (launchers, the CLI)."""
        asyncio.run(self.preflight(timeout_s))

    async def aclose(self) -> None:
        """Close the connection pool of the running loop."""
        loop = asyncio.get_running_loop()
        state = self._per_loop.pop(id(loop), None)
        if state:
            await state[0].close()
