"""The scoring engine: one code path for training (verl reward manager) and the offline ``score`` command.

For a row ``(data_source, response, ground_truth, extra_info)`` it looks up the task, computes the rule
components in-process, runs the task's isolated check (math-verify) in a :class:`HardTimeoutPool` with a memo
shared by equal keys, asks the judge when the task has annotations, and combines everything into ``score``.
Nothing raises on model output; a judge failure becomes ``visual = 0, judge_failed = 1``, a judge reply cut at its
token budget ``judge_truncated = 1``. The judge's replies are constrained by vLLM's ``structured_outputs`` when the
server supports it (detected once per scorer, :mod:`perception_r1.judge.structured`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .isolation import TIMED_OUT, HardTimeoutPool
from .judge.client import JudgeClient
from .judge.structured import StructuredSupport, detect_structured_outputs
from .judge.visual import VisualVerdict, judge_visual
from .rewards.registry import Task, build_settings, check_setting_keys, get_task, registered_tasks, validate_row

logger = logging.getLogger(__name__)

REDETECT_S = 30.0
"""Seconds before asking again whether the judge supports structured outputs, when it could not be asked."""
STREAM_WINDOW = 4096
"""Rows in flight when a stream is scored without a judge (bounded memory; enough to keep the workers busy)."""


@dataclass
class ScoreRow:
    """One input row of the scoring contract."""

    data_source: str
    response: str
    ground_truth: Any
    extra_info: Mapping[str, Any]


@dataclass
class Scored:
    """The result for one row: ``values`` is the output row (``score`` first, then the task's components).

    ``judge``: the judge call's verdict and cost (``None`` when the row asked no judge); ``judged``: the row asked
    (or needed) the judge; ``judge_error``: why that failed, when it did; ``isolated_error``: the isolated check
    crashed (a dead worker, e.g. on Ctrl-C), so the row's accuracy is the check's default rather than a verdict
    (resumable callers score such a row again).
    """

    values: dict[str, float | int | None]
    judge_latency_s: float | None = None
    isolated_timed_out: bool = False
    judge: VisualVerdict | None = None
    judged: bool = False
    judge_error: str | None = None
    isolated_error: bool = False


class _MemoEntry:
    """One isolated-check result shared by every row with its key.

    The worker's ``concurrent.futures.Future`` is wrapped into one asyncio future per event loop, so a group of
    rows awaiting the same check costs one thread-to-loop wake-up, not one per row.
    """

    __slots__ = ("future", "_wrapped")

    def __init__(self, future: Future) -> None:
        self.future = future
        self._wrapped: dict[int, asyncio.Future] = {}

    def wait(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        wrapped = self._wrapped.get(id(loop))
        if wrapped is None or wrapped.get_loop() is not loop:
            wrapped = self._wrapped[id(loop)] = asyncio.wrap_future(self.future)  # on the running loop
        return wrapped


class RewardScorer:
    """Scores rows; create one per process and reuse it (it owns the worker pool, memo and judge client).

    Args:
        settings: run settings (``--set`` / ``reward.reward_kwargs``), validated against every task's fields.
        judge: the judge client, or ``None`` (rows that need a judge then get ``judge_failed = 1``).
        workers: processes for isolated checks (default: CPU count, at most 8).
        memo_size: how many isolated-check results to remember.
    """

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        judge: JudgeClient | None = None,
        workers: int | None = None,
        memo_size: int = 200_000,  # pragma: no mutate (equivalent: a cache size no test fills)
    ) -> None:
        self.overrides = dict(settings or {})
        check_setting_keys(self.overrides)
        self.judge = judge
        self._workers = workers
        self._pool: HardTimeoutPool | None = None
        self._settings: dict[str, Any] = {}
        self._memo: OrderedDict[tuple[str, Hashable], _MemoEntry] = OrderedDict()
        self._memo_size = memo_size
        self._warned_no_judge = False  # pragma: no mutate (equivalent: None is falsy too)
        self._structured: dict[int, asyncio.Future] = {}
        self._structured_at = 0.0  # pragma: no mutate (equivalent: read only once `structured` is set, with it)
        self.structured: StructuredSupport | None = None
        """The judge's reply mode once detected (``None`` before the first judged row)."""
        self.judge_failures = 0
        self.judge_calls = 0
        self.isolated_errors = 0
        self.isolated_timeouts = 0
        for task in registered_tasks().values():  # a bad value (e.g. coord_frame=yolo) fails here, not mid-run
            self.settings_for(task)

    # ------------------------------------------------------------- helpers

    def settings_for(self, task: Task) -> Any:
        """The task's settings dataclass built from this run's overrides (cached)."""
        cached = self._settings.get(task.data_source)
        if cached is None:
            cached = self._settings[task.data_source] = build_settings(task.settings, self.overrides)
        return cached

    @property
    def pool(self) -> HardTimeoutPool:
        if self._pool is None:
            self._pool = HardTimeoutPool(self._workers)
        return self._pool

    def prewarm(self, data_sources: Iterable[str] | None = None) -> None:
        """Start the worker pool now for these tasks' isolated checks (default: every registered task), so the
        workers' imports overlap reading and rule-scoring the input instead of delaying the first check."""
        from .rewards.registry import registered_tasks

        tasks = registered_tasks()
        names = tasks if data_sources is None else [d for d in data_sources if d in tasks]
        modules = {tasks[d].isolated.fn.__module__ for d in names if tasks[d].isolated is not None}
        for module in sorted(modules):
            self.pool.prewarm(module)

    def validate(self, row: ScoreRow) -> Task:
        """The row's task after checking its ground truth and that it agrees with this run's settings (e.g. the
        coordinate frame it was built for); ``KeyError``/``ValueError`` on bad rows."""
        task = get_task(row.data_source)
        validate_row(task, row.ground_truth, row.extra_info or {}, self.settings_for(task))
        return task

    async def _isolated(self, task: Task, settings: Any, row: ScoreRow) -> tuple[float, str | None]:
        """``(value, problem)``; ``problem`` is ``None``, ``"timeout"`` or ``"error"``."""
        check = task.isolated
        assert check is not None
        key = check.key(row.response, row.ground_truth, settings)
        if key is None:
            return check.default, None
        if check.shortcut is not None:
            verdict = check.shortcut(key)
            if verdict is not None:
                return float(verdict), None
        memo_key = (task.data_source, key)
        entry = self._memo.get(memo_key)
        if entry is None:
            entry = _MemoEntry(self.pool.submit(check.fn, (key, settings), check.timeout_s(settings)))
            self._memo[memo_key] = entry
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)  # pragma: no mutate (equivalent: last=None is falsy too)
        else:
            self._memo.move_to_end(memo_key)
        try:
            value = await asyncio.shield(entry.wait())  # a cancelled row must not cancel its group's check
        except Exception as exc:  # a bug or a dead worker: score this row's check as failed, keep training
            self.isolated_errors += 1
            if log_due(self.isolated_errors):
                logger.warning("isolated check %s failed (%d so far): %s", check.component, self.isolated_errors, exc)
            return check.default, "error"
        if value is TIMED_OUT:
            self.isolated_timeouts += 1
            logger.warning(
                "isolated check %s hit its hard time limit (%d so far); scoring it %s",
                check.component,
                self.isolated_timeouts,
                check.default,
            )
            return check.default, "timeout"
        return float(value), None

    # ------------------------------------------------------------- scoring

    async def score(self, row: ScoreRow) -> Scored:
        """Score one row (validates it first)."""
        task = self.validate(row)
        settings = self.settings_for(task)
        response = row.response if isinstance(row.response, str) else ""
        extra_info = row.extra_info or {}
        try:
            components: dict[str, Any] = dict(task.rule_components(response, row.ground_truth, extra_info, settings))
        except Exception:  # scorers must not raise on model output; if one does, log it and score the minimum
            logger.exception("rule scorer for %s raised; scoring the row as garbage", task.data_source)
            components = {}

        annotations = task.annotations(extra_info) if task.annotations is not None else None
        problem = None  # pragma: no mutate (equivalent: "" is neither "timeout" nor "error")
        latency = error = None
        verdict: VisualVerdict | None = None
        judged_row = bool(task.annotations is not None and annotations)
        if judged_row:
            assert annotations is not None
            prompt = getattr(settings, "judge_prompt", "paper")
            if task.isolated is not None:  # both I/O-bound steps at once
                (accuracy, problem), verdict = await asyncio.gather(
                    self._isolated(task, settings, row), self._judge(annotations, response, prompt)
                )
                components[task.isolated.component] = accuracy
            else:
                verdict = await self._judge(annotations, response, prompt)
            components["visual"] = verdict.visual
            components["judge_failed"] = int(verdict.failed)
            components["judge_truncated"] = int(verdict.truncated)
            latency = verdict.latency_s
            error = verdict.error if verdict.failed else None  # a failed verdict always says why
        else:
            if task.isolated is not None:  # awaited directly: no task objects on the common no-judge path
                components[task.isolated.component], problem = await self._isolated(task, settings, row)
            if task.annotations is not None:
                components["visual"], components["judge_failed"], components["judge_truncated"] = None, 0, 0

        values: dict[str, Any] = {key: _clean(components.get(key, 0.0)) for key in task.output_keys}
        values = {"score": _clean(task.combine(values, settings)) or 0.0, **values}  # score first
        return Scored(
            values=values,
            judge_latency_s=latency,
            isolated_timed_out=problem == "timeout",
            judge=verdict,
            judged=judged_row,
            judge_error=error,
            isolated_error=problem == "error",
        )

    async def constrained(self) -> bool:
        """Whether this scorer's judge replies are constrained: detected on the first judged row and cached; a
        server that could not be asked (down) is asked again after :attr:`REDETECT_S` (free text meanwhile)."""
        if self.judge is None:
            return False
        support = self.structured
        if support is not None and (support.definitive or time.monotonic() - self._structured_at < REDETECT_S):
            return support.constrained
        loop = asyncio.get_running_loop()
        pending = self._structured.get(id(loop))
        if pending is None or pending.get_loop() is not loop or (pending.done() and support is not None):
            pending = self._structured[id(loop)] = loop.create_task(detect_structured_outputs(self.judge))
        support = await asyncio.shield(pending)
        if self.structured is None or self.structured != support:
            logger.info(support.describe())
        self.structured, self._structured_at = support, time.monotonic()
        return support.constrained

    async def _judge(self, annotations: list[str], response: str, prompt: str) -> VisualVerdict:
        """The judge's verdict for a row with at least one annotation (``failed`` without a judge)."""
        if self.judge is None:
            if not self._warned_no_judge:
                logger.warning("rows have visual annotations but no judge is configured: visual = 0, judge_failed = 1")
                self._warned_no_judge = True
            self.judge_failures += 1
            return VisualVerdict(
                [0] * len(annotations),  # pragma: no mutate (equivalent: a failed verdict's list is never read)
                failed=True,
                latency_s=None,
                error="no judge is configured",
            )
        self.judge_calls += 1
        verdict = await judge_visual(
            self.judge, annotations, response, prompt=prompt, constrained=await self.constrained()
        )
        if verdict.failed:
            self.judge_failures += 1
        return verdict

    def default_window(self, rows: int | None = None) -> int:
        """Rows in flight: 4x the judge's concurrency (at least 256) with a judge; without one, every row of a
        list (``rows``) or :data:`STREAM_WINDOW` for a stream."""
        if self.judge is not None:
            return max(256, 4 * self.judge.settings.max_concurrency)
        return rows if rows is not None else STREAM_WINDOW

    async def score_stream(
        self,
        rows: Iterable[tuple[Hashable, ScoreRow]],
        on_scored: Callable[[Hashable, Scored], None],
        window: int | None = None,
    ) -> None:
        """Score ``(key, row)`` pairs pulled lazily from ``rows``; ``on_scored(key, result)`` as each finishes.

        At most ``window`` rows are in flight (default :meth:`default_window`), so memory stays bounded however long
        the stream is: a caller that writes each result out (``perception-r1 score``) never holds the whole file.
        Results arrive in completion order; the key says which row each one is.
        """
        window = window or self.default_window()
        pending = iter(rows)

        async def lane() -> None:
            for key, row in pending:  # lanes share one iterator: each row is taken once
                on_scored(key, await self.score(row))

        await asyncio.gather(*(lane() for _ in range(max(1, window))))

    async def score_many(
        self, rows: Iterable[ScoreRow], on_done: Callable[[int], None] | None = None, window: int | None = None
    ) -> list[Scored]:
        """Score rows concurrently; results keep input order.

        At most ``window`` rows are in flight. With a judge the default is 4x its concurrency (at least 256):
        starting every row at once would run all the rule scoring before the first judge request leaves, while a
        window keeps the CPU work and the judge's latency overlapped. Without a judge every row starts at once,
        so all isolated checks are queued to the worker pool as early as possible.
        """
        rows = list(rows)
        results: list[Scored | None] = [None] * len(rows)

        def put(index: Hashable, result: Scored) -> None:
            results[index] = result  # type: ignore[index]
            if on_done is not None:
                on_done(1)

        window = min(window or self.default_window(len(rows)), len(rows))
        await self.score_stream(enumerate(rows), put, window=max(1, window))
        if self.judge_failures:
            logger.warning(
                "judge failed for %d of %d judged rows (visual = 0, judge_failed = 1)",
                self.judge_failures,
                max(self.judge_calls, self.judge_failures),
            )
        return [r for r in results if r is not None]

    async def aclose(self) -> None:
        """Close the judge's connections on the running loop (call before the loop ends)."""
        if self.judge is not None:
            await self.judge.aclose()

    def close(self) -> None:
        """Stop worker processes."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def log_due(count: int) -> bool:
    """Whether the ``count``-th occurrence of a repeated failure is logged: the 1st, 10th and 100th, then every
    1000th (one line per failure would bury a long training run's log; these keep the count visible)."""
    return count in (1, 10, 100) or count % 1000 == 0


def _clean(value: Any) -> float | int | None:
    """Components as plain JSON numbers: ints stay ints, NaN/inf become 0.0, ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else 0.0
