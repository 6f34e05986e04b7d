"""``perception-r1 data curriculum``: order training rows from easy to hard by an offline reward.

Difficulty of a prompt = the mean ``score`` of its rollouts, computed by ``perception-r1 score`` (the training
reward, so "easy" means "the current policy already earns reward here"). Inputs:

- ``--data``: the training parquet (from a builder; each row has ``extra_info.index``);
- ``--rollouts``: a rollout JSONL in the ``score`` contract (``data_source``, ``response``, ``ground_truth``,
  ``extra_info``) whose rows name their prompt by ``extra_info.index`` (or a top-level ``index``);
- ``--scores`` (optional): the ``perception-r1 score`` output for those rollouts, same order; without it the
  rollouts are scored here with the same engine (``--set`` as for ``score``), each in the coordinate frame its
  data row records (``extra_info.coord_frame`` / ``min_pixels`` / ``max_pixels`` of ``--data``, filled into
  rollouts that do not carry them; a rollout that records another frame than its data row is an error).

``--mode sort`` orders rows by mean score, highest first (ties keep data order); ``--mode buckets`` splits that
order into ``--buckets`` equal-size stages and shuffles within each stage (``--seed``), so a stage's prompts are
mixed but stages go easy -> hard. Prompts without rollouts go last (``--unscored last``) or are dropped.

verl 0.9.1 has no curriculum sampler: its train sampler is ``RandomSampler`` when ``data.shuffle=True`` and
``SequentialSampler`` otherwise (``verl.trainer.ppo.utils.create_rl_sampler``; ``trainer.v1.sampler.*`` is the
replay buffer, not the data order). So the curriculum is the row order itself, used with ``data.shuffle=False``.
The output parquet carries the marker ``perception_r1.curriculum`` in its schema metadata, and
``python -m perception_r1.data.curriculum --shuffle-for FILE`` prints ``False`` for such files (``True``
otherwise): the detection launcher sets ``data.shuffle`` from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..commands.common import add_set_option, progress, read_jsonl, settings_from_args
from .common import DataError

logger = logging.getLogger(__name__)
METADATA_KEY = b"perception_r1.curriculum"


def prompt_index(row: Any, where: str) -> int:
    """The prompt index of a rollout row: ``extra_info.index`` or a top-level ``index``."""
    value = None
    if isinstance(row, dict):
        extra = row.get("extra_info")
        if isinstance(extra, dict) and extra.get("index") is not None:
            value = extra["index"]
        elif row.get("index") is not None:
            value = row["index"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise DataError(f"{where}: field 'extra_info.index': expected the prompt's integer index, got {value!r}")
    return int(value)


def mean_scores(indices: Sequence[int], scores: Sequence[float]) -> dict[int, float]:
    """Mean score per prompt index."""
    sums: dict[int, float] = defaultdict(float)
    counts: dict[int, int] = defaultdict(int)
    for index, score in zip(indices, scores, strict=True):
        sums[index] += float(score)
        counts[index] += 1
    return {index: sums[index] / counts[index] for index in sums}


def curriculum_order(
    row_indices: Sequence[int],
    difficulty: dict[int, float],
    mode: str = "sort",
    buckets: int = 3,
    seed: int = 0,
    unscored: str = "last",
) -> list[tuple[int, int]]:
    """``[(position in data, stage), ...]`` easy -> hard.

    ``row_indices[p]`` is the prompt index of data row ``p``; ``difficulty`` maps a prompt index to its mean
    score (higher = easier). ``sort``: one stage, by descending score, ties in data order. ``buckets``: the same
    order cut into ``buckets`` near-equal stages, each shuffled with ``seed``. Unscored rows form a last stage
    (``unscored="last"``) or are dropped (``"drop"``).
    """
    if mode not in ("sort", "buckets"):
        raise ValueError(f"mode: expected 'sort' or 'buckets', got {mode!r}")
    if unscored not in ("last", "drop"):
        raise ValueError(f"unscored: expected 'last' or 'drop', got {unscored!r}")
    scored = [p for p, idx in enumerate(row_indices) if idx in difficulty]
    rest = [p for p, idx in enumerate(row_indices) if idx not in difficulty]
    scored.sort(key=lambda p: -difficulty[row_indices[p]])  # stable: ties keep data order
    if mode == "sort":
        out = [(p, 0) for p in scored]
        stages = 1
    else:
        if buckets < 1:
            raise ValueError(f"buckets: expected >= 1, got {buckets}")
        rng = random.Random(seed)
        out, stages = [], min(buckets, max(1, len(scored)))
        for stage in range(stages):
            chunk = scored[stage * len(scored) // stages : (stage + 1) * len(scored) // stages]
            rng.shuffle(chunk)
            out.extend((p, stage) for p in chunk)
    if unscored == "last":
        out.extend((p, stages) for p in rest)
    return out


FRAME_KEYS = ("coord_frame", "min_pixels", "max_pixels")


def data_frames(data: Path | None) -> dict[int, dict[str, Any]]:
    """``{prompt index: the frame fields its row records}`` of a training parquet (empty without one)."""
    if data is None or not Path(data).is_file():
        return {}
    import pyarrow.parquet as pq

    try:
        extra = pq.read_table(data, columns=["extra_info"]).column("extra_info").to_pylist()
    except Exception:  # a broken or foreign file: write_curriculum reports it with its own message
        return {}
    out: dict[int, dict[str, Any]] = {}
    for p, item in enumerate(extra):
        if isinstance(item, dict) and item.get("index") is not None:
            fields = {k: item[k] for k in FRAME_KEYS if item.get(k) is not None}
            if fields:
                out[prompt_index({"extra_info": item}, f"{data} row {p}")] = fields
    return out


def load_rollout_scores(
    rollouts: Path,
    scores: Path | None,
    settings: dict[str, str],
    workers: int | None,
    frames: dict[int, dict[str, Any]] | None = None,
) -> dict:
    """Mean score per prompt index, from a ``score`` output file or by scoring the rollouts here (``frames``: the
    data rows' recorded frames by prompt index, see :func:`data_frames`)."""
    indices = [prompt_index(obj, f"{rollouts}:{number}") for number, obj in read_jsonl(rollouts)]
    if not indices:
        raise DataError(f"{rollouts}: no rollout rows")
    if scores is not None:
        values = []
        for number, obj in read_jsonl(scores):
            value = obj.get("score") if isinstance(obj, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DataError(f"{scores}:{number}: field 'score': expected a finite number, got {value!r}")
            values.append(float(value))
        if len(values) != len(indices):
            raise DataError(f"{scores}: {len(values)} score rows but {rollouts} has {len(indices)} rollouts")
    else:
        values = score_rollouts(rollouts, settings, workers, frames)
    return mean_scores(indices, values)


def score_rollouts(
    rollouts: Path, settings: dict[str, str], workers: int | None, frames: dict[int, dict[str, Any]] | None = None
) -> list[float]:
    """Score a rollout file with exactly the ``perception-r1 score`` engine; the ``score`` of each row.

    ``frames`` (prompt index -> recorded frame fields) fill in what a rollout's ``extra_info`` lacks.
    """
    from ..commands.score import load_rows
    from ..errors import CommandError
    from ..scoring import RewardScorer

    rows = load_rows(str(rollouts))
    lines = [(number, prompt_index(obj, f"{rollouts}:{number}")) for number, obj in read_jsonl(rollouts)]
    for row, (number, index) in zip(rows, lines, strict=True):
        for key, value in (frames or {}).get(index, {}).items():
            have = row.extra_info.get(key)
            if have is None:
                row.extra_info = {**row.extra_info, key: value}
            elif have != value:
                raise DataError(
                    f"{rollouts}:{number}: field 'extra_info.{key}': {have!r} but its data row records {value!r}"
                )
    try:
        scorer = RewardScorer(settings, judge=None, workers=workers)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    try:
        for row, (number, _) in zip(rows, lines, strict=True):  # a row built for another frame: refused up front
            try:
                scorer.validate(row)
            except ValueError as exc:
                raise DataError(f"{rollouts}:{number}: {exc}") from None
        with progress(len(rows), "scoring rollouts") as bar:
            results = asyncio.run(scorer.score_many(rows, on_done=bar.update))
    finally:
        scorer.close()
    return [float(r.values["score"]) for r in results]


def write_curriculum(
    data: Path,
    output: Path,
    difficulty: dict[int, float],
    mode: str,
    buckets: int,
    seed: int,
    unscored: str,
) -> list[int]:
    """Reorder ``data`` into ``output`` (atomically); returns the prompt indices in their new order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(data)
    except FileNotFoundError:
        raise DataError(f"{data}: file not found") from None
    except Exception as exc:  # pyarrow raises several types for broken files
        raise DataError(f"{data}: not a readable parquet file ({exc})") from None
    if "extra_info" not in table.column_names:
        raise DataError(f"{data}: missing column 'extra_info' (build it with `perception-r1 data ...`)")
    extra = table.column("extra_info").to_pylist()
    row_indices = [prompt_index({"extra_info": e}, f"{data} row {p}") for p, e in enumerate(extra)]
    if len(set(row_indices)) != len(row_indices):
        raise DataError(f"{data}: field 'extra_info.index': duplicate prompt indices")
    unknown = set(difficulty) - set(row_indices)
    if unknown:
        raise DataError(f"rollouts name prompt indices not in {data}: {sorted(unknown)[:5]}")
    order = curriculum_order(row_indices, difficulty, mode, buckets, seed, unscored)
    if not order:
        raise DataError("no rows left after dropping unscored prompts")
    positions = [p for p, _ in order]
    new_extra = []
    for p, stage in order:
        item = dict(extra[p] or {})
        score = difficulty.get(row_indices[p])
        item["curriculum_score"] = score
        item["curriculum_stage"] = stage
        new_extra.append(item)
    table = table.take(pa.array(positions, type=pa.int64()))
    table = table.set_column(table.column_names.index("extra_info"), "extra_info", pa.array(new_extra))
    info = {"mode": mode, "buckets": buckets, "seed": seed, "unscored": unscored, "source": str(data)}
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(info).encode()
    table = table.replace_schema_metadata(metadata)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return [row_indices[p] for p in positions]


def is_curriculum_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a curriculum-ordered parquet (its order must not be shuffled)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # missing or broken: not a curriculum (the preflight reports the file itself)
        return False
    return METADATA_KEY in metadata


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "curriculum",
        help="order a training parquet easy -> hard by offline rollout scores",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="training parquet (rows with extra_info.index)")
    parser.add_argument("--rollouts", type=Path, required=True, help="rollout JSONL (score contract + prompt index)")
    parser.add_argument("--scores", type=Path, default=None, help="`perception-r1 score` output for --rollouts")
    parser.add_argument("--output", type=Path, required=True, help="curriculum parquet to write (atomically)")
    parser.add_argument("--mode", choices=("sort", "buckets"), default="sort", help="default sort")
    parser.add_argument("--buckets", type=int, default=3, help="stages for --mode buckets (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed within stages (default 0)")
    parser.add_argument("--unscored", choices=("last", "drop"), default="last", help="prompts without rollouts")
    parser.add_argument("--workers", type=int, default=None, help="scoring processes (without --scores)")
    add_set_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    frames = data_frames(args.data) if args.scores is None else None
    difficulty = load_rollout_scores(args.rollouts, args.scores, settings_from_args(args), args.workers, frames)
    order = write_curriculum(args.data, args.output, difficulty, args.mode, args.buckets, args.seed, args.unscored)
    logger.info(
        "wrote %d rows easy -> hard (%d prompts scored) -> %s; train with data.shuffle=False",
        len(order),
        len(difficulty),
        args.output,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m perception_r1.data.curriculum --shuffle-for FILE``: the ``data.shuffle`` value for a file."""
    parser = argparse.ArgumentParser(prog="python -m perception_r1.data.curriculum")
    parser.add_argument("--shuffle-for", required=True, metavar="PARQUET")
    args = parser.parse_args(argv)
    print("False" if is_curriculum_file(args.shuffle_for) else "True")
    return 0


if __name__ == "__main__":
    sys.exit(main())
