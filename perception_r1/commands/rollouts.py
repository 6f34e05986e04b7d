"""``perception-r1 rollouts from-verl``: verl's rollout dumps -> rows of the ``perception-r1 score`` contract.

verl 0.9.1 writes one JSONL per step when ``trainer.rollout_data_dir`` (or ``trainer.validation_data_dir``) is set
(``RayPPOTrainer._write_generations``): ``<dir>/<step>.jsonl`` with one row per trajectory,
``{"input": <decoded prompt>, "output": <decoded response>, "gts": <reward_model.ground_truth>, "score": <its
reward>, "step": N, <every reward_extra_info key>...}``. The dump has neither ``data_source`` nor ``extra_info``
(visual annotations, image sizes, the prompt index), so each trajectory is matched back to its row of the
training parquet (``--data``, the run's ``data.train_files``): the row whose prompt text appears in the decoded
prompt (special tokens, and so the image placeholders, are gone from it) with an equal ground truth.

Output rows ``{data_source, response, ground_truth, extra_info, step, training_score}`` (``extra_info`` as in the
parquet, ``extra_info.index`` included) go straight into ``perception-r1 score --input`` and
``perception-r1 data curriculum --rollouts``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CommandError
from .common import read_jsonl, write_jsonl_atomic

logger = logging.getLogger(__name__)
IMAGE_PLACEHOLDER = "<image>"
DUMP_FIELDS = ("input", "output", "gts")


def _norm(text: str) -> str:
    return " ".join(text.split())


def _canonical(value: Any) -> str:
    """A ground truth as comparable text: JSON with sorted keys, floats as Python writes them."""
    return json.dumps(_plain(value), sort_keys=True, ensure_ascii=False, default=str)


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays/scalars from parquet
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return int(value) if abs(value) < 2**53 else value
    return value


def _message_texts(prompt: Any) -> list[str]:
    """The text of each prompt message as the decoded prompt shows it (image placeholders removed)."""
    texts = []
    for message in _plain(prompt) or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
        if isinstance(content, str):
            text = _norm(content.replace(IMAGE_PLACEHOLDER, " "))
            if text:
                texts.append(text)
    return texts


@dataclass
class DataRow:
    """One training-parquet row, as the matcher needs it."""

    where: str
    data_source: str
    ground_truth: Any
    extra_info: dict[str, Any]
    texts: list[str]

    def appears_in(self, decoded: str) -> bool:
        """Every message text occurs in the normalised decoded prompt, in order."""
        start = 0
        for text in self.texts:
            found = decoded.find(text, start)
            if found < 0:
                return False
            start = found + len(text)
        return True


def load_data(paths: Sequence[Path]) -> list[DataRow]:
    """The rows of the training parquet(s), without their image bytes."""
    import pyarrow.parquet as pq

    rows: list[DataRow] = []
    for path in paths:
        try:
            names = pq.read_schema(path).names
        except FileNotFoundError:
            raise CommandError(f"{path}: file not found") from None
        except Exception as exc:  # pyarrow raises several types for broken files
            raise CommandError(f"{path}: not a readable parquet file ({exc})") from None
        missing = [c for c in ("prompt", "data_source", "reward_model") if c not in names]
        if missing:
            raise CommandError(f"{path}: missing column(s) {missing} (a parquet from `perception-r1 data ...`)")
        columns = ["prompt", "data_source", "reward_model"] + (["extra_info"] if "extra_info" in names else [])
        table = pq.read_table(path, columns=columns)
        for i, row in enumerate(table.to_pylist()):
            reward_model = row.get("reward_model") or {}
            rows.append(
                DataRow(
                    where=f"{path} row {i}",
                    data_source=str(row["data_source"]),
                    ground_truth=reward_model.get("ground_truth"),
                    extra_info=row.get("extra_info") or {},
                    texts=_message_texts(row["prompt"]),
                )
            )
    if not rows:
        raise CommandError(f"{', '.join(map(str, paths))}: no rows")
    return rows


def dump_files(paths: Sequence[Path], steps: set[int] | None) -> list[tuple[int | None, Path]]:
    """verl's per-step files (``<step>.jsonl``) in step order, from files and dump folders."""
    found: list[tuple[int | None, Path]] = []
    for path in paths:
        if path.is_dir():
            files = [p for p in path.glob("*.jsonl") if re.fullmatch(r"\d+", p.stem)]
            if not files:
                raise CommandError(f"{path}: no verl dump files (<step>.jsonl) in this folder")
            found += [(int(p.stem), p) for p in files]
        elif path.is_file():
            found.append((int(path.stem) if re.fullmatch(r"\d+", path.stem) else None, path))
        else:
            raise CommandError(f"{path}: no such file or folder")
    if steps is not None:
        found = [(s, p) for s, p in found if s in steps]
        if not found:
            raise CommandError(f"no dump file for --steps {sorted(steps)}")
    return sorted(found, key=lambda sp: (sp[0] is None, sp[0] or 0, str(sp[1])))


class Matcher:
    """Finds a trajectory's training row: equal ground truth first, then the prompt text (see the module doc)."""

    def __init__(self, rows: list[DataRow]) -> None:
        self.rows = rows  # _canonical compares 12 and 12.0 alike: verl's JSON and parquet may differ there
        self.by_truth: dict[str, list[DataRow]] = defaultdict(list)
        for row in rows:
            self.by_truth[_canonical(row.ground_truth)].append(row)
        self.ambiguous = 0

    def match(self, decoded_prompt: str, gts: Any) -> DataRow | None:
        decoded = _norm(decoded_prompt)
        candidates = self.by_truth.get(_canonical(gts))
        if candidates is None:  # e.g. a ground truth verl had to stringify: match by the prompt alone
            candidates = self.rows
        hits = [row for row in candidates if row.appears_in(decoded)]
        if not hits:
            return None
        best = max(sum(len(t) for t in row.texts) for row in hits)  # the most specific prompt wins
        hits = [row for row in hits if sum(len(t) for t in row.texts) == best]
        if len(hits) > 1:
            self.ambiguous += 1
        return hits[0]


def convert(
    dumps: Sequence[tuple[int | None, Path]], matcher: Matcher, skip_unmatched: bool
) -> Iterator[dict[str, Any]]:
    """Score-contract rows for every trajectory of the dump files; ``CommandError`` naming an unmatched row."""
    unmatched = 0
    for step, path in dumps:
        for number, obj in read_jsonl(path):
            where = f"{path}:{number}"
            if not isinstance(obj, dict):
                raise CommandError(f"{where}: expected a JSON object (a verl rollout dump row)")
            missing = [f for f in DUMP_FIELDS if f not in obj]
            if missing:
                raise CommandError(
                    f"{where}: missing field(s) {missing}; expected verl's dump rows {{input, output, gts, score, "
                    "step, ...}} (trainer.rollout_data_dir)"
                )
            if not isinstance(obj["input"], str) or not isinstance(obj["output"], str):
                raise CommandError(f"{where}: fields 'input' and 'output' must be strings (decoded text)")
            row = matcher.match(obj["input"], obj["gts"])
            if row is None:
                if skip_unmatched:
                    unmatched += 1
                    continue
                raise CommandError(
                    f"{where}: no row of --data has this prompt and ground truth {_canonical(obj['gts'])[:80]}; "
                    "pass the parquet the run trained on (data.train_files), or --skip-unmatched"
                )
            out = {
                "data_source": row.data_source,
                "response": obj["output"],
                "ground_truth": row.ground_truth,
                "extra_info": row.extra_info,
                "step": obj.get("step", step),
                "training_score": obj.get("score"),
            }
            for key in ("uid", "request_id"):
                if key in obj:
                    out[key] = obj[key]
            yield out
    if unmatched:
        logger.warning("skipped %d dump row(s) that match no row of --data", unmatched)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("rollouts", help="turn verl rollout dumps into `score` / `data curriculum` input")
    commands = parser.add_subparsers(dest="rollouts_command", metavar="ROLLOUTS_COMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    conv = commands.add_parser(
        "from-verl",
        help="verl's trainer.rollout_data_dir dumps -> rows of the score contract",
        description=__doc__,
    )
    conv.add_argument(
        "--dump", type=Path, nargs="+", required=True, help="dump folder(s) (trainer.rollout_data_dir) or step files"
    )
    conv.add_argument(
        "--data", type=Path, nargs="+", required=True, help="the training parquet(s) of the run (data.train_files)"
    )
    conv.add_argument("--output", type=Path, required=True, help="rollouts JSONL to write (atomically)")
    conv.add_argument("--steps", type=int, nargs="+", default=None, help="only these training steps (default: all)")
    conv.add_argument(
        "--skip-unmatched", action="store_true", help="drop trajectories whose row is not in --data (default: error)"
    )
    conv.set_defaults(func=run_from_verl)


def run_from_verl(args: argparse.Namespace) -> int:
    dumps = dump_files(args.dump, set(args.steps) if args.steps else None)
    matcher = Matcher(load_data(args.data))
    count = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal count
        for row in convert(dumps, matcher, args.skip_unmatched):
            count += 1
            yield row

    write_jsonl_atomic(args.output, rows())
    if matcher.ambiguous:
        logger.warning(
            "%d trajectories matched several identical rows of --data; each was given the first one", matcher.ambiguous
        )
    logger.info("%d trajectories from %d dump file(s) -> %s", count, len(dumps), args.output)
    return 0
