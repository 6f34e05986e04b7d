"""``perception-r1 score``: offline scoring of a rollout file with exactly the training reward code path."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from ..errors import CommandError
from ..judge.client import JudgeClient, JudgeUnavailable
from ..rewards.registry import get_task
from ..scoring import RewardScorer, ScoreRow
from .common import (
    add_judge_options,
    add_set_option,
    judge_settings_from_args,
    progress,
    read_jsonl,
    settings_from_args,
    write_jsonl_atomic,
)

logger = logging.getLogger(__name__)
REQUIRED_FIELDS = ("data_source", "response", "ground_truth")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score a rollout JSONL file",
        description="Score rows {data_source, response, ground_truth, extra_info} into one JSON row each "
        "({score, <components>}), same order. Malformed input: exit 2, nothing written.",
    )
    parser.add_argument("--input", required=True, help="rollouts JSONL")
    parser.add_argument("--output", required=True, help="scores JSONL (written atomically)")
    parser.add_argument("--workers", type=int, default=None, help="processes for math-verify (default: CPUs)")
    add_judge_options(parser)
    add_set_option(parser)
    parser.set_defaults(func=run)


def load_rows(path: str) -> list[ScoreRow]:
    """Read and validate every row before any scoring; ``CommandError`` names the first bad line and field."""
    rows: list[ScoreRow] = []
    for number, obj in read_jsonl(path):
        where = f"{path}:{number}"
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
        rows.append(ScoreRow(str(obj["data_source"]), obj["response"], obj["ground_truth"], extra_info))
    return rows


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    judge_settings = judge_settings_from_args(args)
    judge = JudgeClient(judge_settings) if judge_settings else None
    try:
        scorer = RewardScorer(settings, judge=judge, workers=args.workers)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    try:
        # Workers start (and import math-verify) while the input is read and validated.
        scorer.prewarm()
        rows = load_rows(args.input)
        needs_judge = any(get_task(r.data_source).annotations is not None for r in rows)
        if judge is not None and needs_judge:
            try:
                judge.preflight_sync()
            except JudgeUnavailable as exc:
                logger.warning("%s; scoring goes on and judged rows get judge_failed = 1", exc)

        async def score_all(bar: Any) -> list[Any]:
            try:
                return await scorer.score_many(rows, on_done=bar.update)
            finally:
                await scorer.aclose()

        with progress(len(rows), "scoring") as bar:
            results = asyncio.run(score_all(bar))
    finally:
        scorer.close()
    write_jsonl_atomic(args.output, (r.values for r in results))
    failed = sum(int(r.values.get("judge_failed") or 0) for r in results)
    mean = sum(float(r.values["score"]) for r in results) / len(results) if results else 0.0
    logger.info("scored %d rows -> %s (mean score %.4f, judge_failed %d)", len(results), args.output, mean, failed)
    return 0
