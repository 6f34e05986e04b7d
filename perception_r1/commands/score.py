"""``perception-r1 score``: offline scoring of a rollout file with exactly the training reward code path.

The input is read as a stream (validated first, then scored with a bounded number of rows in flight), and each
scored row is appended to a resume file beside the output the moment it is done. An interrupted run (Ctrl-C, a
kill, a crash) keeps those rows: rerunning the same command scores, and asks the judge about, only the rest. The
resume file records what the rows were scored with (the input's sha256, the resolved settings of every task, the
judge model); a rerun with anything else is refused. When every row is done the output is written in input order,
atomically, and the resume file is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import signal
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CommandError
from ..judge.client import JudgeClient, JudgeSettings, JudgeUnavailable
from ..rewards.registry import get_task, registered_tasks
from ..scoring import RewardScorer, Scored, ScoreRow
from .common import (
    add_judge_options,
    add_set_option,
    atomic_writer,
    judge_settings_from_args,
    progress,
    read_jsonl,
    settings_from_args,
)

logger = logging.getLogger(__name__)
REQUIRED_FIELDS = ("data_source", "response", "ground_truth")
RESUME_FORMAT = "perception-r1 score resume file"
RESUME_VERSION = 1
READ_BLOCK = 1 << 20  # bytes hashed at a time: the input is fingerprinted in bounded memory
MEMO_SIZE = 16_384  # isolated-check results remembered: GRPO groups are adjacent, so a small LRU suffices
DEFAULT_MAX_FAILURE_RATE = 0.5


def register(subparsers: Any) -> None:
    from .tasks import settings_epilog

    parser = subparsers.add_parser(
        "score",
        help="score a rollout JSONL file (resumable)",
        description="Score rows {data_source, response, ground_truth, extra_info} into one JSON row each "
        "({score, <components>}), same order. Malformed input: exit 2, nothing written. Interrupted runs resume: "
        "rerun the same command and only the rows not yet done are scored (and judged).",
        epilog=settings_epilog,  # built when --help is shown (commands.common.Parser)
    )
    parser.add_argument("--input", required=True, help="rollouts JSONL")
    parser.add_argument("--output", required=True, help="scores JSONL (written atomically when every row is done)")
    parser.add_argument("--workers", type=int, default=None, help="processes for math-verify (default: CPUs, max 8)")
    parser.add_argument(
        "--resume-file", default=None, help="where done rows are kept until the end (default: OUTPUT.resume.jsonl)"
    )
    parser.add_argument(
        "--restart", action="store_true", help="discard an existing resume file and score every row again"
    )
    parser.add_argument(
        "--max-judge-failure-rate",
        type=float,
        default=DEFAULT_MAX_FAILURE_RATE,
        help="share of judged rows whose judge call may fail; above it the run exits 1 and writes no output "
        "(1: never stop; rows then get visual = 0, judge_failed = 1)",
    )
    add_judge_options(parser)
    add_set_option(parser)
    parser.set_defaults(func=run)


# ------------------------------------------------------------------ input


def parse_row(obj: Any, where: str) -> tuple[ScoreRow, bool]:
    """``(row, needs_judge)`` for one input object; ``CommandError`` naming ``where`` and the field when malformed."""
    if not isinstance(obj, dict):
        raise CommandError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for field in REQUIRED_FIELDS:
        if field not in obj:
            raise CommandError(f"{where}: missing field {field!r}")
    if not isinstance(obj["response"], str):
        raise CommandError(f"{where}: field 'response' must be a string, got {type(obj['response']).__name__}")
    extra_info = obj.get("extra_info") or {}
    if not isinstance(extra_info, dict):
        raise CommandError(f"{where}: field 'extra_info' must be an object, got {type(extra_info).__name__}")
    try:
        task = get_task(str(obj["data_source"]))
        task.validate(obj["ground_truth"], extra_info)
    except KeyError as exc:
        raise CommandError(f"{where}: field 'data_source': {exc.args[0]}") from None
    except ValueError as exc:
        raise CommandError(f"{where}: {exc}") from None
    needs_judge = task.annotations is not None and bool(task.annotations(extra_info))
    return ScoreRow(str(obj["data_source"]), obj["response"], obj["ground_truth"], extra_info), needs_judge


def iter_rows(path: str) -> Iterator[tuple[ScoreRow, bool]]:
    """Validated rows of ``path``, one at a time (blank lines skipped); stops at the first bad line."""
    for number, obj in read_jsonl(path):
        yield parse_row(obj, f"{path}:{number}")


def load_rows(path: str) -> list[ScoreRow]:
    """Read and validate every row before any scoring; ``CommandError`` names the first bad line and field."""
    return [row for row, _ in iter_rows(path)]


@dataclass
class InputScan:
    """What a validating pass over the input found (nothing of the rows themselves is kept)."""

    rows: int
    judged: int
    sha256: str


def scan_input(path: str) -> InputScan:
    """Validate every row (``CommandError`` on the first bad one) and fingerprint the file, in bounded memory."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(READ_BLOCK), b""):
                digest.update(block)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None
    rows = judged = 0
    for _, needs_judge in iter_rows(path):
        rows += 1
        judged += needs_judge
    return InputScan(rows=rows, judged=judged, sha256=digest.hexdigest())


# ------------------------------------------------------------------ the resume file


class ResumeMismatch(CommandError):
    """An existing resume file was written by a run with other inputs or settings."""


class ResumeFile:
    """An append-only JSONL of scored rows, ``{"i": index, "final": bool, "judged": bool, "v": values}``, after a
    header that identifies the run. A row is *final* when rescoring could not change it: a judge failure or a
    crashed isolated check is kept for the output but scored again on a rerun. A torn last line (a kill in the
    middle of a write) is cut off when the file is reopened. Memory: one byte and one file offset per row."""

    def __init__(self, path: Path, header: dict[str, Any], rows: int, restart: bool = False) -> None:
        self.path = path
        self.rows = rows
        self.offsets = array("q", [-1]) * rows  # pragma: no mutate (equivalent: every row is added before it is read)
        self.final = bytearray(rows)
        self.resumed = 0
        if restart and path.exists():
            path.unlink()
        fresh = not path.exists()
        if fresh:
            with atomic_writer(path) as handle:  # the header exists before any row does
                handle.write(json.dumps(header) + "\n")  # ASCII, as the rows are
        self._handle = open(path, "r+b")
        try:
            import fcntl

            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock, as before
            pass
        except BlockingIOError:
            self._handle.close()
            raise CommandError(f"{path} is in use by another `perception-r1 score` run on the same output") from None
        if not fresh:
            try:
                self._load(header)
            except BaseException:
                self._handle.close()
                raise
        self._position = self._handle.seek(0, os.SEEK_END)
        self._last_sync = self._last_flush = time.monotonic()

    def _load(self, header: dict[str, Any]) -> None:
        with open(self.path, "rb") as handle:
            first = handle.readline()
            try:
                found = json.loads(first)
            except json.JSONDecodeError:
                found = None  # pragma: no mutate (equivalent: any non-dict is "not a resume file")
            if not isinstance(found, dict) or found.get("format") != RESUME_FORMAT:
                raise ResumeMismatch(
                    f"{self.path} exists but is not a score resume file; move it away or pass --restart"
                )
            differs = [
                (key, what)
                for key, what in (("input", "input"), ("settings", "settings"), ("judge", "judge model"))
                if found.get(key) != header.get(key)
            ]
            if differs or found.get("version") != RESUME_VERSION:
                raise ResumeMismatch(
                    f"{self.path} holds rows scored with another "
                    f"{' and '.join(what for _, what in differs) or 'file version'} "
                    f"(it has {', '.join(_describe(found, key) for key, _ in differs) or found.get('version')}); "
                    "rerun with the same input and settings to resume, or pass --restart to score every row again"
                )
            good = handle.tell()
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # torn by a kill mid-write
                try:
                    entry = json.loads(line)
                    index = int(entry["i"])
                    final = bool(entry["final"])
                    entry["v"]["score"]  # noqa: B018 - a row without a score is corrupt
                except (ValueError, KeyError, TypeError):
                    raise ResumeMismatch(
                        f"{self.path}: corrupt row at byte {good}; pass --restart to score every row again"
                    ) from None
                if not 0 <= index < self.rows:
                    raise ResumeMismatch(f"{self.path}: row index {index} out of range; pass --restart")
                self.offsets[index] = good
                self.final[index] = final
                good += len(line)
            size = self.path.stat().st_size
        if good < size:
            logger.warning(
                "%s: dropping a torn last line (%d bytes) left by an interrupted run", self.path, size - good
            )
            with open(self.path, "r+b") as handle:
                handle.truncate(good)
        self.resumed = sum(self.final)

    def add(self, index: int, scored: Scored) -> None:
        """Append one scored row. Rows reach the file at least every 0.1 s (a kill loses at most that much
        scoring; Ctrl-C and errors lose nothing: :meth:`close` flushes) and the disk about once a second."""
        final = not (scored.judged and scored.values.get("judge_failed")) and not scored.isolated_error
        entry = {"i": index, "final": final, "judged": scored.judged, "v": scored.values}
        data = (json.dumps(entry) + "\n").encode()  # ASCII: a row reads the same whatever the locale
        self.offsets[index] = self._position
        self._handle.write(data)
        self._position += len(data)
        self.final[index] = final
        now = time.monotonic()
        if now - self._last_flush >= 0.1:
            self._handle.flush()
            self._last_flush = now
            if now - self._last_sync >= 1.0:
                os.fsync(self._handle.fileno())
                self._last_sync = now

    @property
    def done(self) -> int:
        return sum(self.final)

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def entries(self) -> Iterator[dict[str, Any]]:
        """The latest entry of every row, in input order (reads the file by offset: bounded memory)."""
        with open(self.path, "rb") as handle:  # pragma: no mutate (equivalent: rows are ASCII JSON, read alike in any mode)
            for offset in self.offsets:  # every row is scored before this (a -1 left would fail the seek)
                handle.seek(offset)
                yield json.loads(handle.readline())


def _describe(header: dict[str, Any], key: str) -> str:
    value = header.get(key)
    if key == "input" and isinstance(value, dict):
        return f"input sha256 {str(value.get('sha256'))[:12]}…, {value.get('rows')} rows"
    if key == "judge":
        return f"judge {value.get('model') if isinstance(value, dict) else None!r}"
    return "its own settings"


def resume_header(scan: InputScan, scorer: RewardScorer, judge: JudgeSettings | None) -> dict[str, Any]:
    """What the rows are scored with: a rerun resumes only when all of it is equal."""
    settings = {
        name: dataclasses.asdict(scorer.settings_for(task))  # plain JSON values: compared with the file's as they are
        for name, task in sorted(registered_tasks().items())
    }
    judge_info = None
    if scan.judged and judge is not None:  # the judge only matters when some row asks it
        judge_info = {"model": judge.model, "temperature": judge.temperature, "max_tokens": judge.max_tokens}
    return {
        "format": RESUME_FORMAT,
        "version": RESUME_VERSION,
        "input": {"sha256": scan.sha256, "rows": scan.rows},
        "settings": settings,
        "judge": judge_info,
    }


# ------------------------------------------------------------------ the command


def _check_rate(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise CommandError(f"--max-judge-failure-rate must be between 0 and 1, got {value}")
    return value


def _reasons(errors: Counter[str]) -> str:
    if not errors:
        return "failed in an earlier run"
    return "; ".join(f"{message} ({count} row{'s' if count != 1 else ''})" for message, count in errors.most_common(3))


def _preflight(judge: JudgeClient | None, scan: InputScan, limit: float) -> None:
    """Fail fast when rows need a judge that is missing or unusable (unless failures are allowed outright)."""
    if not scan.judged:
        return
    allow = limit >= 1.0
    if judge is None:
        message = (
            f"{scan.judged} of {scan.rows} rows have visual annotations but no judge is configured "
            "(set --judge-base-url or VLLM_SERVER_BASE_URL)"
        )
        if not allow:
            raise CommandError(
                f"{message}; pass --max-judge-failure-rate 1 to score them with visual = 0, judge_failed = 1",
                code=1,
            )
        logger.warning("%s: they get visual = 0, judge_failed = 1", message)
        return
    try:
        judge.preflight_sync()
    except JudgeUnavailable as exc:
        if not allow:
            raise CommandError(
                f"{exc}; no rows scored. Fix the judge, or pass --max-judge-failure-rate 1 to score the "
                f"{scan.judged} judged rows with visual = 0, judge_failed = 1",
                code=1,
            ) from None
        logger.warning("%s; scoring goes on and judged rows get judge_failed = 1", exc)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a scheduler's preemption, ``kill PID``) ends the run like Ctrl-C: done rows flushed, one line."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    limit = _check_rate(args.max_judge_failure_rate)
    settings = settings_from_args(args)
    judge_settings = judge_settings_from_args(args)
    judge = JudgeClient(judge_settings) if judge_settings else None
    try:
        scorer = RewardScorer(settings, judge=judge, workers=args.workers, memo_size=MEMO_SIZE)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    resume_path = Path(args.resume_file or f"{args.output}.resume.jsonl")
    resume: ResumeFile | None = None
    errors: Counter[str] = Counter()
    try:
        scorer.prewarm()  # workers start (and import math-verify) while the input is read and validated
        scan = scan_input(args.input)
        if scan.rows == 0:
            logger.warning("%s has no rows: writing an empty %s", args.input, args.output)
            with atomic_writer(args.output):
                pass
            return 0
        _preflight(judge, scan, limit)  # before the resume file exists: a run that cannot start leaves nothing
        resume = ResumeFile(resume_path, resume_header(scan, scorer, judge_settings), scan.rows, args.restart)
        if resume.resumed:
            logger.info("resuming: %d of %d rows already scored in %s", resume.resumed, scan.rows, resume_path)
        final = resume.final

        def pending() -> Iterator[tuple[int, ScoreRow]]:
            for index, (row, _) in enumerate(iter_rows(args.input)):
                if not final[index]:
                    yield index, row

        async def score_all(bar: Any) -> None:
            def done(index: Any, scored: Scored) -> None:
                assert resume is not None
                resume.add(index, scored)
                if scored.judge_error and (scored.judge_error in errors or len(errors) < 20):
                    errors[scored.judge_error] += 1
                bar.update(1)

            try:
                await scorer.score_stream(pending(), done)
            finally:
                await scorer.aclose()

        with progress(scan.rows, "scoring", initial=resume.resumed) as bar, _sigterm_interrupts():
            try:
                asyncio.run(score_all(bar))
            except KeyboardInterrupt:
                resume.close()
                raise CommandError(
                    f"interrupted: {resume.done} of {scan.rows} rows are scored and kept in {resume_path}; "
                    "rerun the same command to resume",
                    code=130,
                ) from None
    finally:
        scorer.close()
        if resume is not None:
            resume.close()
    assert resume is not None
    write_output(args.output, resume, scan, limit, errors, resume_path)
    resume_path.unlink()
    return 0


def write_output(
    output: str, resume: ResumeFile, scan: InputScan, limit: float, errors: Counter[str], resume_path: Path
) -> None:
    """Every row in input order, atomically; ``CommandError`` (nothing written) when the judge failed too often."""
    judged = failed = 0
    total = 0.0
    with atomic_writer(output) as handle:
        for entry in resume.entries():
            values = entry["v"]
            handle.write(json.dumps(values) + "\n")  # numbers only: no text to escape
            total += float(values["score"])
            if entry["judged"]:
                judged += 1
                failed += bool(values.get("judge_failed"))
        if failed:  # then judged >= failed > 0
            rate = failed / judged
            line = f"judge failed for {failed} of {judged} judged rows ({rate:.0%}): {_reasons(errors)}"
            if rate > limit:
                raise CommandError(
                    f"{line}; above --max-judge-failure-rate {limit:g}, so no output is written. The rows are kept "
                    f"in {resume_path}: fix the judge and rerun the same command (only the failed rows ask it again)",
                    code=1,
                )
            logger.warning("%s; those rows have visual = 0, judge_failed = 1", line)
    logger.info("scored %d rows -> %s (mean score %.4f, judge_failed %d)", scan.rows, output, total / scan.rows, failed)
