"""A local OpenAI-compatible HTTP server for tests and benchmarks (real sockets, scripted answers).

It serves ``GET /v1/models``, ``POST /v1/chat/completions`` and vLLM's ``GET /version`` on 127.0.0.1 from a
background thread. Answers come from a ``responder(request_json) -> str`` callable; latency, HTTP errors, hangs,
malformed 200 bodies and ``content: null`` can be injected, and every request is recorded (``requests`` and the
richer :attr:`OpenAITestServer.log`). Like vLLM it reports ``usage`` (``prompt_tokens``, ``completion_tokens`` and
``prompt_tokens_details.cached_tokens`` for a repeated prefix), honours ``max_tokens`` (``finish_reason: "length"``)
and ``structured_outputs: {"regex": ...}`` (vLLM >= 0.12: the reply always matches the regex).

Scripted judges: :func:`substring_judge` (the default), :func:`hash_judge` (deterministic pseudo-random verdicts
for CPU training runs), :func:`lying_judge` (``all1``, ``all0``, ``random``,
``copy``), :func:`chatty_judge` (free-text habits of real LLM judges) and :func:`labelled_judge` (answers known
labels). Run it standalone (``python -m perception_r1.testing.openai_server --port 8000``) to try the launchers
without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

Responder = Callable[[dict[str, Any]], str]

_ANNOTATION_LINE = re.compile(r"^(\d+)\. (.*)$", re.MULTILINE)
_FENCE = re.compile(r"^(=====RESPONSE-[0-9a-f]+=====)$", re.MULTILINE)


def _last_user_text(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content or "")
    return ""


def fenced_annotations(request: dict[str, Any]) -> tuple[list[tuple[str, str]], str] | None:
    """``([(number, annotation), ...], response)`` of a visual-judge request, or ``None`` when it is not one."""
    text = _last_user_text(request)
    fence = _FENCE.search(text)
    if not fence:
        return None
    head, _, rest = text.partition(fence.group(1) + "\n")
    response, _, _ = rest.partition("\n" + fence.group(1))
    return _ANNOTATION_LINE.findall(head), response


def parse_judge_request(request: Mapping[str, Any]) -> tuple[list[str], str] | None:
    """``(annotations, fenced response)`` of a visual-judge request (its last user message), or ``None`` when the
    request is not one (no random fence: e.g. a probe)."""
    parsed = fenced_annotations(dict(request))
    if parsed is None:
        return None
    return [annotation for _, annotation in parsed[0]], parsed[1]


def render_verdicts(verdicts: Sequence[int]) -> str:
    """The protocol's reply: ``<info1>v</info1>\\n<info2>v</info2>...``."""
    return "\n".join(f"<info{k}>{int(v)}</info{k}>" for k, v in enumerate(verdicts, start=1))


def substring_verdicts(annotations: Sequence[str], response: str) -> list[int]:
    """1 for each annotation whose text appears verbatim (case- and space-insensitive) in ``response``."""
    norm_response = " ".join(response.lower().split())
    return [int(" ".join(a.lower().split()) in norm_response) for a in annotations]


def substring_judge(request: dict[str, Any]) -> str:
    """A scripted visual judge: annotation k is "stated" iff its text appears verbatim (case- and
    space-insensitive) inside the fenced response of the last user message."""
    parsed = parse_judge_request(request)
    if parsed is None:
        return ""
    return render_verdicts(substring_verdicts(*parsed))


_PLANTED = re.compile(r"[<‹]\s*info\s*(\d+)\s*[>›]\s*([01])\s*[<‹]\s*/\s*info\s*\1\s*[>›]", re.IGNORECASE)
LYING_MODES = ("all1", "all0", "random", "copy")


def lying_judge(mode: str, seed: int = 0) -> Responder:
    """A judge that lies in one scripted way, for testing that the canary metrics expose it:

    - ``all1`` / ``all0``: every annotation present / absent, whatever the response says;
    - ``random``: a fair coin per annotation (seeded);
    - ``copy``: copies verdict tags planted in the response (``<info2>1</info2>``, also in their defanged form
      ``‹info2›1‹/info2›``, as a weak model reading the fenced text would), the substring verdict elsewhere.
    """
    if mode not in LYING_MODES:
        raise ValueError(f"lying judge mode must be one of {', '.join(LYING_MODES)}, got {mode!r}")
    rng = random.Random(seed)
    lock = threading.Lock()

    def respond(request: dict[str, Any]) -> str:
        parsed = parse_judge_request(request)
        if parsed is None:
            return ""
        annotations, response = parsed
        m = len(annotations)
        if mode == "all1":
            return render_verdicts([1] * m)
        if mode == "all0":
            return render_verdicts([0] * m)
        if mode == "random":
            with lock:
                return render_verdicts([rng.randint(0, 1) for _ in range(m)])
        verdicts = substring_verdicts(annotations, response)
        for number, value in _PLANTED.findall(response):
            if 1 <= int(number) <= m:
                verdicts[int(number) - 1] = int(value)
        return render_verdicts(verdicts)

    return respond


def labelled_judge(labels: Mapping[str, Sequence[int]], fallback: Responder | None = None) -> Responder:
    """A truthful judge for known rows: ``labels`` maps a response text to its per-annotation labels; other
    requests go to ``fallback`` (default :func:`substring_judge`). Responses are compared on their alphanumerics, so
    the defanged text the judge sees (``‹info1›``) matches the original (``<info1>``)."""
    by_key = {_alnum(response): list(values) for response, values in labels.items()}
    fallback = fallback or substring_judge

    def respond(request: dict[str, Any]) -> str:
        parsed = parse_judge_request(request)
        if parsed is not None:
            known = by_key.get(_alnum(parsed[1]))
            if known is not None and len(known) == len(parsed[0]):
                return render_verdicts(known)
        return fallback(request)

    return respond


def _alnum(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


_VERDICT_ANY = re.compile(r"<info(\d+)>\s*([01])\s*</info\1>")
CHATTY_STYLES = ("clean", "preamble", "float", "explain", "reasoning", "words", "unclosed")
"""Reply habits of free-text LLM judges, in the order :func:`chatty_judge` draws them."""


def chatty_judge(
    seed: int = 0, base: Responder | None = None, weights: Sequence[float] = (40, 15, 10, 10, 10, 10, 5)
) -> Responder:
    """A judge with the free-text habits of real LLM judges: the verdicts of ``base`` (default: substring) written
    in a style drawn per reply from :data:`CHATTY_STYLES` (``weights``): clean lines, a line of preamble,
    ``1.0``/``0.0``, an explanation after each tag, a reasoning paragraph before each tag, words (``yes``/``no``) and
    unclosed tags. Under ``structured_outputs`` it writes the verdicts it means in the strict format, which is what
    constrained decoding leaves of a model's habits (the grammar masks every other token)."""
    base = base or substring_judge
    rng = random.Random(seed)
    lock = threading.Lock()

    def respond(request: dict[str, Any]) -> str:
        parsed = parse_judge_request(request)
        if parsed is None:
            return base(request)
        annotations, _ = parsed
        meant = [0] * len(annotations)
        for number, value in _VERDICT_ANY.findall(base(request)):
            if 1 <= int(number) <= len(meant):
                meant[int(number) - 1] = int(value)
        if isinstance(request.get("structured_outputs"), dict):
            return render_verdicts(meant)
        with lock:
            style = rng.choices(CHATTY_STYLES, weights=weights)[0]
        return _chatty(style, annotations, meant)

    return respond


def _chatty(style: str, annotations: Sequence[str], verdicts: Sequence[int]) -> str:
    lines = []
    for k, (annotation, v) in enumerate(zip(annotations, verdicts, strict=True), start=1):
        if style == "float":
            lines.append(f"<info{k}>{v}.0</info{k}>")
        elif style == "explain":
            why = "the response states it" if v else "the response does not mention it"
            lines.append(f"<info{k}>{v}</info{k}> ({why})")
        elif style == "reasoning":
            lines.append(
                f"Annotation {k} says {annotation}. Reading the response carefully, "
                f"{'it includes this fact in its own words' if v else 'I cannot find this fact anywhere in it'}, "
                f"so the verdict for annotation {k} is:\n<info{k}>{v}</info{k}>"
            )
        elif style == "words":
            lines.append(f"<info{k}>{'yes' if v else 'no'}</info{k}>")
        elif style == "unclosed":
            lines.append(f"<info{k}>{v}")
        else:
            lines.append(f"<info{k}>{v}</info{k}>")
    text = "\n".join(lines)
    if style == "preamble":
        text = "Here is my assessment of each visual annotation against the student's response:\n\n" + text
    return text


def hash_judge(request: dict[str, Any]) -> str:
    """A scripted visual judge with deterministic pseudo-random verdicts: annotation k is "stated" iff the first
    byte of sha256(annotation, response) is odd. Not a judge of anything: it gives a random-weight policy's
    rollouts *different* visual rewards (so GRPO has a signal) in CPU training runs, reproducibly."""
    import hashlib

    parsed = fenced_annotations(request)
    if parsed is None:
        return ""
    annotations, response = parsed
    lines = []
    for number, annotation in annotations:
        digest = hashlib.sha256(f"{annotation}\x00{response}".encode()).digest()
        lines.append(f"<info{number}>{digest[0] & 1}</info{number}>")
    return "\n".join(lines)


FAULT_KINDS = ("not_json", "no_choices", "null_content")
"""Malformed 200 answers: a body that is not JSON, a JSON body without ``choices``, ``message.content: null``."""


@dataclass
class Fault:
    """An injected failure for the next ``count`` requests: an HTTP ``status``, a ``hang_s`` delay (``math.inf``:
    until the server stops, so a client timeout is the only way out, however loaded the machine), or a malformed
    200 answer of one of :data:`FAULT_KINDS`."""

    count: int
    status: int | None = None
    hang_s: float = 0.0
    kind: str | None = None


@dataclass
class RequestRecord:
    """One chat request as the server saw and answered it (the request log tests read)."""

    body: dict[str, Any]
    status: int
    text: str | None = None
    finish_reason: str | None = None
    constrained: bool = False
    fault: str | None = None
    usage: dict[str, Any] | None = None
    started: float = 0.0
    finished: float = 0.0
    peer: tuple | None = None
    """The client's ``(host, port)``: requests over one keep-alive connection share it."""


@dataclass
class OpenAITestServer:
    """``with OpenAITestServer(models=["judge"]) as server: server.base_url`` -> ``http://127.0.0.1:PORT/v1``."""

    models: list[str] = field(default_factory=lambda: ["judge"])
    responder: Responder = substring_judge
    latency_s: float = 0.0
    api_key: str | None = None
    port: int = 0
    host: str = "127.0.0.1"
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    record: bool = True
    faults: list[Fault] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    version: str | None = "0.24.0"
    """What ``GET /version`` answers (vLLM's endpoint); ``None``: 404, like a server that is not vLLM."""
    structured_outputs: bool = True
    """Honour ``structured_outputs: {"regex": ...}`` (vLLM >= 0.12); ``False``: ignore the field, like older vLLM."""
    reject_unknown_fields: bool = False
    """With ``structured_outputs=False``: answer 400 to a request that carries the field (like api.openai.com)."""
    report_cached_tokens: bool = True
    """Report ``usage.prompt_tokens_details.cached_tokens`` (vLLM with ``--enable-prompt-tokens-details``)."""
    log: list[RequestRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._released: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._prefixes: set[str] = set()
        self.request_count = 0
        self.models_requests: list[str | None] = []
        """The ``Authorization`` header of every ``GET /models`` (a preflight's footprint)."""

    # ------------------------------------------------------------------ control
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def fail_next(self, count: int, status: int | None = None, hang_s: float = 0.0, kind: str | None = None) -> None:
        """Make the next ``count`` chat requests fail with ``status``, hang for ``hang_s`` seconds, or answer a
        malformed 200 (``kind`` in :data:`FAULT_KINDS`)."""
        if kind is not None and kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        with self._lock:
            self.faults.append(Fault(count=count, status=status, hang_s=hang_s, kind=kind))

    def _take_fault(self) -> Fault | None:
        with self._lock:
            while self.faults and self.faults[0].count <= 0:
                self.faults.pop(0)
            if not self.faults:
                return None
            self.faults[0].count -= 1
            return self.faults[0]

    # ------------------------------------------------------------------ handlers
    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        self.models_requests.append(request.headers.get("Authorization"))
        if not self._authorized(request):
            return web.json_response({"error": {"message": "unauthorized"}}, status=401)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _version(self, request: web.Request) -> web.Response:
        if self.version is None:
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response({"version": self.version})

    async def _chat(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "unauthorized"}}, status=401)
        body = await request.json()
        self.request_count += 1
        if self.record:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
        record = RequestRecord(body=body, status=200, started=time.time())
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        record.peer = tuple(peer[:2]) if peer else None
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self._answer(body, record)
        finally:
            self.in_flight -= 1
            record.finished = time.time()
            if self.record:
                self.log.append(record)
        return response

    async def _answer(self, body: dict[str, Any], record: RequestRecord) -> web.Response:
        fault = self._take_fault()
        if fault is not None and fault.hang_s == float("inf"):
            await self._released.wait()
        elif fault is not None and fault.hang_s:
            await asyncio.sleep(fault.hang_s)
        if fault is not None and fault.status:
            record.status, record.fault = fault.status, f"HTTP {fault.status}"
            return web.json_response({"error": {"message": f"injected {fault.status}"}}, status=fault.status)
        if body.get("model") not in self.models:
            record.status = 404
            return web.json_response(
                {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}}, status=404
            )
        regex = self._regex(body)
        if regex is False:
            record.status = 400
            return web.json_response(
                {"error": {"message": "Unrecognized request argument supplied: structured_outputs"}}, status=400
            )
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        try:
            text = self.responder(body)
        except InjectedOutage as exc:
            record.status, record.fault = 503, "outage"
            return web.json_response({"error": {"message": str(exc)}}, status=503)
        if regex:
            text, record.constrained = constrain_to_regex(text, regex), True
        text, finish_reason = _apply_max_tokens(text, body.get("max_tokens"))
        usage = self._usage(body, text)
        record.text, record.finish_reason, record.usage = text, finish_reason, usage
        if fault is not None and fault.kind:
            record.fault = fault.kind
            return _malformed(fault.kind, body, usage)
        return web.json_response(
            {
                "id": f"chatcmpl-{self.request_count}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
                ],
                "usage": usage,
            }
        )

    def _regex(self, body: Mapping[str, Any]) -> str | bool | None:
        """The regex to honour; ``None`` for none (or ignored); ``False`` to reject the request."""
        spec = body.get("structured_outputs")
        if spec is None:
            return None
        if not self.structured_outputs:
            return False if self.reject_unknown_fields else None
        return spec.get("regex") if isinstance(spec, dict) and isinstance(spec.get("regex"), str) else None

    def _usage(self, body: Mapping[str, Any], text: str) -> dict[str, Any]:
        """Token counts at ~4 characters a token; a repeated prefix (all messages but the last) counts as cached,
        in whole blocks of 16 tokens, as vLLM's prefix cache reports it."""
        messages = body.get("messages") or []
        prompt_tokens = max(1, len(json.dumps(messages, ensure_ascii=False)) // 4)
        completion_tokens = _tokens(text)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if self.report_cached_tokens:
            prefix = json.dumps(messages[:-1], ensure_ascii=False)
            with self._lock:
                seen = prefix in self._prefixes
                self._prefixes.add(prefix)
            cached = (len(prefix) // 4) // 16 * 16 if seen else 0
            usage["prompt_tokens_details"] = {"cached_tokens": min(cached, prompt_tokens)}
        return usage

    # ------------------------------------------------------------------ lifecycle
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/version", self._version)
        return app

    def start(self) -> OpenAITestServer:
        ready = threading.Event()
        error: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._released = asyncio.Event()
            try:
                runner = web.AppRunner(self._app(), access_log=None)
                loop.run_until_complete(runner.setup())
                site = web.TCPSite(runner, self.host, self.port, backlog=1024)
                loop.run_until_complete(site.start())
                self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                self._runner = runner
            except BaseException as exc:  # surface bind errors to the caller
                error.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True, name="openai-test-server")
        self._thread.start()
        ready.wait(10)
        if error:
            raise error[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._released.set)  # endless hangs answer now, so cleanup is quick
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _apply_max_tokens(text: str, max_tokens: Any) -> tuple[str, str]:
    """Cut the reply at ``max_tokens`` (~4 characters a token) like a real server: ``finish_reason`` ``length``."""
    if isinstance(max_tokens, int) and max_tokens > 0 and _tokens(text) > max_tokens:
        return text[: 4 * max_tokens], "length"
    return text, "stop"


def _malformed(kind: str, body: Mapping[str, Any], usage: dict[str, Any]) -> web.Response:
    if kind == "not_json":
        return web.Response(status=200, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
    if kind == "no_choices":
        return web.json_response({"object": "chat.completion", "model": body.get("model"), "usage": usage})
    return web.json_response(  # null_content
        {
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "stop"}],
            "usage": usage,
        }
    )


def constrain_to_regex(text: str, regex: str) -> str:
    """What constrained decoding would leave: ``text`` if it matches ``regex`` in full, else its first matching
    part, else the shortest string the regex admits (always a full match)."""
    pattern = re.compile(regex)
    if pattern.fullmatch(text):
        return text
    found = pattern.search(text)
    if found and pattern.fullmatch(found.group(0)):
        return found.group(0)
    return minimal_match(regex)


def minimal_match(regex: str) -> str:
    """The shortest string matching ``regex`` (literals, classes, groups, alternation, bounded repeats)."""
    try:
        from re import _parser as sre_parse  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - Python < 3.11
        import sre_parse  # type: ignore[no-redef]

    def walk(items: Any) -> str:
        out = []
        for op, arg in items:
            name = str(op)
            if name == "LITERAL":
                out.append(chr(arg))
            elif name == "IN":
                out.append(_first_in_class(arg))
            elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                low, _, sub = arg
                out.append(walk(sub) * low)
            elif name == "SUBPATTERN":
                out.append(walk(arg[-1]))
            elif name == "BRANCH":
                out.append(min((walk(b) for b in arg[1]), key=len))
            elif name in ("AT", "ASSERT", "ASSERT_NOT"):
                continue
            elif name == "ANY":
                out.append("a")
            else:
                raise ValueError(f"minimal_match: unsupported regex construct {name} in {regex!r}")
        return "".join(out)

    result = walk(sre_parse.parse(regex))
    if not re.fullmatch(regex, result):
        raise ValueError(f"minimal_match: could not build a match for {regex!r}")
    return result


def _first_in_class(items: Any) -> str:
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            return chr(arg)
        if name == "RANGE":
            return chr(arg[0])
        if name == "CATEGORY":
            return {"CATEGORY_DIGIT": "0", "CATEGORY_SPACE": " ", "CATEGORY_WORD": "a"}.get(str(arg), "a")
    return "a"


def responder_for(mode: str, seed: int = 0) -> Responder:
    """The scripted judge named ``mode``: ``substring``, ``hash``, ``chatty`` or a :data:`LYING_MODES` one."""
    if mode == "substring":
        return substring_judge
    if mode == "hash":
        return hash_judge
    if mode == "chatty":
        return chatty_judge(seed)
    return lying_judge(mode, seed)


def wait_until_ready(base_url: str, timeout_s: float = 60.0, interval_s: float = 0.2) -> bool:
    """Poll ``GET <base_url>/models`` until any server answers (200, or 401 for a keyed one); ``False`` on timeout.

    Works for this server and for ``vllm serve`` alike: a demo starts the server in the background, then waits
    here instead of sleeping a fixed time.
    """
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    url = base_url.rstrip("/") + "/models"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return True
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return True
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill PID` (SIGTERM) stops the server cleanly, like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve a scripted OpenAI-compatible judge on 127.0.0.1, or wait for a server (--wait URL)."
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="judge")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each chat request")
    add_judge_behaviour_options(parser)
    parser.add_argument(
        "--reply", default=None, help="answer every chat request with this text (instead of --judge)"
    )
    parser.add_argument(
        "--ready-file", default=None, help="write the base URL to this file once listening (removed on exit)"
    )
    parser.add_argument(
        "--wait", metavar="BASE_URL", default=None, help="do not serve: wait until BASE_URL answers GET /models"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits (default 60)")
    args = parser.parse_args(argv)
    if args.wait:
        if wait_until_ready(args.wait, args.timeout):
            return 0
        print(f"openai_server: {args.wait} is not ready after {args.timeout:g} s (GET /models)", file=sys.stderr)
        return 1
    responder: Responder = substring_judge if args.reply is None else (lambda request: args.reply)
    server = OpenAITestServer(
        models=[args.model],
        responder=responder,
        api_key=args.api_key,
        latency_s=args.latency,
        port=args.port,
        record=False,
    )
    apply_judge_behaviour_options(server, args)
    if args.reply is not None:  # a fixed reply wins over --judge
        server.responder = responder
    server.start()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    ready = Path(args.ready_file) if args.ready_file else None
    try:
        if ready is not None:
            tmp = ready.with_name(f".{ready.name}.tmp")
            tmp.write_text(server.base_url + "\n", encoding="utf-8")
            os.replace(tmp, ready)
        print(f"serving {args.model!r} at {server.base_url}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if ready is not None:
            ready.unlink(missing_ok=True)
    return 0


def add_judge_behaviour_options(parser: argparse.ArgumentParser) -> None:
    """CLI options for the scripted judge's behaviour (what the CPU training run's judge needs)."""
    modes = ("substring", "hash", "chatty", *LYING_MODES)
    parser.add_argument("--judge", default="substring", choices=modes, help="scripted judge (default: substring)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random/chatty judges")
    parser.add_argument("--vllm-version", default="0.24.0", help="what GET /version answers ('none': 404)")
    parser.add_argument("--no-structured-outputs", action="store_true", help="ignore structured_outputs (old vLLM)")
    parser.add_argument(
        "--fail-after",
        type=int,
        default=None,
        metavar="N",
        help="answer HTTP 503 to every chat request after the first N (a judge that goes down mid-run)",
    )


def apply_judge_behaviour_options(server: OpenAITestServer, args: argparse.Namespace) -> None:
    server.responder = responder_for(args.judge, args.seed)
    server.version = None if args.vllm_version.lower() == "none" else args.vllm_version
    server.structured_outputs = not args.no_structured_outputs
    if args.fail_after is not None:
        healthy = server.responder
        server.responder = fail_after(healthy, args.fail_after)


class InjectedOutage(Exception):
    """Raised by a responder to make the server answer 503 (see ``--fail-after``)."""


def fail_after(responder: Responder, n: int) -> Responder:
    """``responder`` for the first ``n`` chat requests, then HTTP 503 for every one (a judge that goes down mid-run;
    with ``judge_canaries_per_step=0`` and no validation, ``n = steps x trajectories per step`` healthy steps)."""
    count = 0
    lock = threading.Lock()

    def respond(request: dict[str, Any]) -> str:
        nonlocal count
        with lock:
            count += 1
            down = count > n
        if down:
            raise InjectedOutage(f"judge down after {n} requests")
        return responder(request)

    return respond


if __name__ == "__main__":
    sys.exit(main())
