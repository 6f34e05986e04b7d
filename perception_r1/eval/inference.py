"""Benchmark inference: run a checkpoint on benchmark items and append each answer to a JSONL file as it arrives.

Two engines share one result file format (one JSON object per line: ``id``, ``benchmark``, ``response``,
``model``, ``sampling`` and usage):

- **server** (:func:`run_server`): an OpenAI-compatible endpoint (the checkpoint served by ``vllm serve``),
  images sent as ``data:`` URLs, through the package's :class:`~perception_r1.judge.client.JudgeClient` (bounded
  concurrency, per-request timeout, retries with backoff, replica round-robin). No second HTTP client.
- **vllm** (:func:`run_vllm_offline`): vLLM's offline ``LLM.chat`` engine, when vLLM is installed (GPU).

Resume: :class:`ResultStore` reads the ids already in the file (dropping a torn last line left by a kill) and
only the missing items are requested; each row is flushed as soon as it arrives, so killing a run loses at most
the requests in flight. A row that fails after its retries is not written (a rerun asks again); after
``max_consecutive_failures`` failures in a row the run stops early instead of hammering a dead server.
Greedy decoding by default; sampling is set through :class:`SamplingSettings`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..judge.client import JudgeClient, JudgeError
from .benchmarks.base import BenchmarkItem

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = (
    "{question}\n\nFirst think step by step inside <think> </think> tags, then give the final answer inside "
    "<answer> </answer> tags, with the answer itself in \\boxed{{}} (the option letter for multiple-choice "
    "questions)."
)


class ResumeMismatch(ValueError):
    """The result file was written with another model, benchmark or sampling settings."""


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings; greedy (temperature 0) by default. ``extra`` goes into the request body (``top_k``…)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 4096
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def request_params(self) -> dict[str, Any]:
        """Chat-completion parameters (OpenAI names, then the vLLM-only ``extra`` ones at the top level)."""
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            params["seed"] = self.seed
        # vLLM reads its own sampling fields (top_k, repetition_penalty…) from the top level of the JSON body;
        # JudgeClient posts the request body as-is, so they go there.
        params.update(self.extra)
        return params

    def record(self) -> dict[str, Any]:
        """The settings as stored with each result row (compared on resume)."""
        return asdict(self)


def build_messages(
    item: BenchmarkItem, template: str = DEFAULT_TEMPLATE, system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """OpenAI chat messages for ``item``: its images as ``data:`` URLs, then the templated question.

    Items from a training-style verl parquet (perception benchmarks) carry their own chat messages: those are
    sent verbatim, each ``<image>`` placeholder replaced by the next image, and ``template`` is not applied.
    """
    verbatim = item.meta.get("messages")
    if verbatim:
        return _verbatim_messages(item, verbatim)
    content: list[dict[str, Any]] = [_image_part(image) for image in item.images]
    content.append({"type": "text", "text": template.format(question=item.prompt)})
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": content})
    return messages


def _image_part(image: Any) -> dict[str, Any]:
    data = base64.b64encode(image.read()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{image.mime()};base64,{data}"}}


def _verbatim_messages(item: BenchmarkItem, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    images = iter(item.images)
    out = []
    for message in messages:
        text = str(message.get("content", ""))
        if "<image>" not in text:
            out.append({"role": message["role"], "content": text})
            continue
        parts: list[dict[str, Any]] = []
        for k, piece in enumerate(text.split("<image>")):
            if k > 0:
                image = next(images, None)
                if image is None:
                    raise ValueError(f"item {item.id}: more <image> placeholders than images")
                parts.append(_image_part(image))
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": message["role"], "content": parts})
    return out


# ------------------------------------------------------------------ the result file


class ResultStore:
    """An append-only JSONL of results keyed by ``id``; reopening it resumes where a previous run stopped.

    A last line without its newline (the process was killed mid-write) is cut off, so the file stays valid.
    """

    def __init__(self, path: str | os.PathLike[str], fsync_every: int = 50) -> None:
        self.path = Path(path)
        self.fsync_every = fsync_every
        self.rows: dict[str, dict[str, Any]] = {}
        self.repaired_bytes = 0
        self._handle: Any = None
        self._since_sync = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good = 0
        for number, line in enumerate(data.splitlines(keepends=True), start=1):
            if not line.endswith(b"\n"):
                break  # torn write from a killed run
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{self.path}:{number}: invalid JSON ({exc.msg}); fix or delete the file"
                    ) from None
                if not isinstance(row, dict) or "id" not in row:
                    raise ValueError(f"{self.path}:{number}: expected an object with an 'id' field")
                self.rows[str(row["id"])] = row
            good += len(line)
        if good < len(data):
            self.repaired_bytes = len(data) - good
            logger.warning(
                "%s: dropping a torn last line (%d bytes) left by an interrupted run", self.path, len(data) - good
            )
            with open(self.path, "r+b") as handle:
                handle.truncate(good)

    def done_ids(self) -> set[str]:
        """Ids that already have a result."""
        return set(self.rows)

    def check_compatible(self, model: str, benchmark: str, sampling: dict[str, Any]) -> None:
        """Refuse to mix rows from another model, benchmark or sampling settings into one file."""
        for row in self.rows.values():
            for name, expected in (("model", model), ("benchmark", benchmark), ("sampling", sampling)):
                if name in row and row[name] != expected:
                    raise ResumeMismatch(
                        f"{self.path} holds results with {name}={row[name]!r}, this run has {name}={expected!r}; "
                        "use another --output file (or delete this one to start over)"
                    )
            return

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and flush it (fsync every ``fsync_every`` rows and on close)."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="utf-8")
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()
        self.rows[str(row["id"])] = row
        self._since_sync += 1
        if self._since_sync >= self.fsync_every:
            os.fsync(self._handle.fileno())
            self._since_sync = 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class InferenceSummary:
    """What a run did: items requested, already done before it, written now, failed, and whether it stopped early."""

    total: int
    skipped: int
    written: int = 0
    failed: int = 0
    aborted: bool = False
    failed_ids: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.skipped + self.written == self.total


def _pending(items: Sequence[BenchmarkItem], store: ResultStore) -> list[BenchmarkItem]:
    done = store.done_ids()
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("benchmark items have duplicate ids")
    return [item for item in items if item.id not in done]


def _progress(total: int, desc: str) -> Any:
    from ..commands.common import progress

    return progress(total, desc, unit="item")


async def run_server(
    items: Sequence[BenchmarkItem],
    store: ResultStore,
    client: JudgeClient,
    sampling: SamplingSettings | None = None,
    template: str = DEFAULT_TEMPLATE,
    system_prompt: str | None = None,
    max_consecutive_failures: int = 20,
    on_done: Callable[[int], None] | None = None,
) -> InferenceSummary:
    """Ask the served model about every item not yet in ``store``; append each answer as it arrives.

    Concurrency, timeouts and retries are the client's (:class:`JudgeSettings`); at most
    ``client.settings.max_concurrency`` requests (and their encoded images) are in memory at once.
    """
    sampling = sampling or SamplingSettings()
    model = client.settings.model
    benchmark = items[0].benchmark if items else ""
    store.check_compatible(model, benchmark, sampling.record())
    pending = _pending(items, store)
    summary = InferenceSummary(total=len(items), skipped=len(items) - len(pending))
    start = time.perf_counter()
    queue: asyncio.Queue[BenchmarkItem] = asyncio.Queue()
    for item in pending:
        queue.put_nowait(item)
    stop = asyncio.Event()
    consecutive = 0
    params = sampling.request_params()

    async def worker() -> None:
        nonlocal consecutive
        while not stop.is_set():
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                messages = build_messages(item, template, system_prompt)
            except (OSError, ValueError) as exc:
                logger.error("item %s: cannot build its request: %s", item.id, exc)
                summary.failed += 1
                summary.failed_ids.append(item.id)
                continue
            try:
                result = await client.chat(messages, **params)
            except JudgeError as exc:
                summary.failed += 1
                summary.failed_ids.append(item.id)
                consecutive += 1
                logger.warning("item %s failed: %s", item.id, exc)
                if consecutive >= max_consecutive_failures and not stop.is_set():
                    logger.error("%d requests failed in a row: stopping (rerun to resume)", consecutive)
                    summary.aborted = True
                    stop.set()
                continue
            consecutive = 0
            store.append(
                {
                    "id": item.id,
                    "benchmark": item.benchmark,
                    "response": result.text,
                    "model": model,
                    "sampling": sampling.record(),
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "latency_s": round(result.latency_s, 4),
                }
            )
            summary.written += 1
            if on_done is not None:
                on_done(1)

    workers = max(1, min(client.settings.max_concurrency, len(pending)))
    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        summary.elapsed_s = time.perf_counter() - start
    return summary


def run_server_sync(
    items: Sequence[BenchmarkItem],
    output: str | os.PathLike[str],
    client: JudgeClient,
    sampling: SamplingSettings | None = None,
    template: str = DEFAULT_TEMPLATE,
    system_prompt: str | None = None,
    max_consecutive_failures: int = 20,
) -> InferenceSummary:
    """:func:`run_server` with its own event loop, result file and progress bar (rate and ETA on stderr)."""
    with ResultStore(output) as store:
        pending = len(_pending(items, store))
        with _progress(pending, f"inference {items[0].benchmark if items else ''}") as bar:

            async def main() -> InferenceSummary:
                try:
                    return await run_server(
                        items, store, client, sampling, template, system_prompt, max_consecutive_failures, bar.update
                    )
                finally:
                    await client.aclose()

            return asyncio.run(main())


def vllm_available() -> bool:
    """Whether vLLM's offline engine can be imported here."""
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


def run_vllm_offline(
    items: Sequence[BenchmarkItem],
    output: str | os.PathLike[str],
    model: str,
    sampling: SamplingSettings | None = None,
    template: str = DEFAULT_TEMPLATE,
    system_prompt: str | None = None,
    batch_size: int = 64,
    engine_args: dict[str, Any] | None = None,
) -> InferenceSummary:
    """Run ``model`` with vLLM's offline engine (GPU) in batches, appending each batch's rows as it finishes.

    ``engine_args`` go to ``vllm.LLM`` (``tensor_parallel_size``, ``max_model_len``, ``gpu_memory_utilization``…).
    Not exercised by the CPU test suite; the result rows match :func:`run_server`'s.
    """
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise RuntimeError("the vllm engine needs vLLM installed (a GPU machine): pip install vllm") from None
    sampling = sampling or SamplingSettings()
    with ResultStore(output) as store:
        benchmark = items[0].benchmark if items else ""
        store.check_compatible(model, benchmark, sampling.record())
        pending = _pending(items, store)
        summary = InferenceSummary(total=len(items), skipped=len(items) - len(pending))
        if not pending:
            return summary
        max_images = max(len(item.images) for item in pending)
        args = {"model": model, "limit_mm_per_prompt": {"image": max(1, max_images)}, **(engine_args or {})}
        llm = LLM(**args)
        params = SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            **sampling.extra,
        )
        start = time.perf_counter()
        with _progress(len(pending), f"inference {benchmark} (vllm)") as bar:
            for offset in range(0, len(pending), batch_size):
                batch = pending[offset : offset + batch_size]
                conversations = [build_messages(item, template, system_prompt) for item in batch]
                outputs = llm.chat(conversations, params, use_tqdm=False)
                for item, output_row in zip(batch, outputs, strict=True):
                    completion = output_row.outputs[0]
                    store.append(
                        {
                            "id": item.id,
                            "benchmark": item.benchmark,
                            "response": completion.text,
                            "model": model,
                            "sampling": sampling.record(),
                            "prompt_tokens": len(output_row.prompt_token_ids or []),
                            "completion_tokens": len(completion.token_ids or []),
                            "finish_reason": completion.finish_reason,
                        }
                    )
                    summary.written += 1
                bar.update(len(batch))
        summary.elapsed_s = time.perf_counter() - start
        return summary


def read_predictions(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{id: response}`` from a result file (a torn last line is ignored); ``ValueError`` naming bad rows."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{path}: no such file")
    data = file.read_text(encoding="utf-8")
    lines = data.splitlines()
    out: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not data.endswith("\n"):
                break  # a torn last line from an interrupted run
            raise ValueError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{path}:{number}: expected an object with field 'id'")
        response = row.get("response")
        if not isinstance(response, str):
            raise ValueError(f"{path}:{number}: field 'response' must be a string, got {type(response).__name__}")
        out[str(row["id"])] = response
    return out
