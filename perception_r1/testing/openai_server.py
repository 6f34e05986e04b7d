"""A local OpenAI-compatible HTTP server for tests and benchmarks (real sockets, scripted answers).

It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` on 127.0.0.1 from a background thread. Answers
come from a ``responder(request_json) -> str`` callable; latency, HTTP errors and hangs can be injected, and every
request is recorded. Run it standalone (``python -m perception_r1.testing.openai_server --port 8000``) to try the
launchers without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
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


def substring_judge(request: dict[str, Any]) -> str:
    """A scripted visual judge: annotation k is "stated" iff its text appears verbatim (case- and
    space-insensitive) inside the fenced response of the last user message."""
    text = _last_user_text(request)
    fence = _FENCE.search(text)
    if not fence:
        return ""
    head, _, rest = text.partition(fence.group(1) + "\n")
    response, _, _ = rest.partition("\n" + fence.group(1))
    norm_response = " ".join(response.lower().split())
    lines = []
    for number, annotation in _ANNOTATION_LINE.findall(head):
        hit = " ".join(annotation.lower().split()) in norm_response
        lines.append(f"<info{number}>{int(hit)}</info{number}>")
    return "\n".join(lines)


@dataclass
class Fault:
    """An injected failure for the next ``count`` requests: an HTTP ``status`` or a ``hang_s`` delay."""

    count: int
    status: int | None = None
    hang_s: float = 0.0


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

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.request_count = 0

    # ------------------------------------------------------------------ control
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def fail_next(self, count: int, status: int | None = None, hang_s: float = 0.0) -> None:
        """Make the next ``count`` chat requests fail with ``status`` or hang for ``hang_s`` seconds."""
        with self._lock:
            self.faults.append(Fault(count=count, status=status, hang_s=hang_s))

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
        if not self._authorized(request):
            return web.json_response({"error": {"message": "unauthorized"}}, status=401)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"message": "unauthorized"}}, status=401)
        body = await request.json()
        self.request_count += 1
        if self.record:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            fault = self._take_fault()
            if fault is not None and fault.hang_s:
                await asyncio.sleep(fault.hang_s)
            if fault is not None and fault.status:
                return web.json_response({"error": {"message": f"injected {fault.status}"}}, status=fault.status)
            if body.get("model") not in self.models:
                return web.json_response({"error": {"message": f"model {body.get('model')!r} not found"}}, status=404)
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            text = self.responder(body)
        finally:
            self.in_flight -= 1
        return web.json_response(
            {
                "id": f"chatcmpl-{self.request_count}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": max(1, len(text) // 4),
                    "total_tokens": 10 + len(text) // 4,
                },
            }
        )

    # ------------------------------------------------------------------ lifecycle
    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    def start(self) -> OpenAITestServer:
        ready = threading.Event()
        error: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
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
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
    parser.add_argument(
        "--reply", default=None, help="answer every chat request with this text (default: the substring judge)"
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


if __name__ == "__main__":
    sys.exit(main())
