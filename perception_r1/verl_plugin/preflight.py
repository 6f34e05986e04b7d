"""Launcher preflight: fail fast, with one clear line, before any Ray or GPU work.

``python -m perception_r1.verl_plugin.preflight --data TRAIN --data VAL [--judge] [--gpus N] [--dry-run]
[-- HYDRA_OVERRIDES...]`` checks, in order:

1. the hydra overrides: no legacy reward keys (``custom_reward_function.*`` / ``reward_model.*``, which verl
   0.9.1's ``main_ppo`` silently ignores) and ``reward.reward_kwargs.*`` names/values every task accepts;
2. each data parquet: readable, has verl's columns (``prompt``, ``data_source``, ``reward_model.ground_truth``,
   ``extra_info``, ``images``), every row's ``data_source`` is a registered task whose ``validate(ground_truth,
   extra_info)`` passes, and the ``<image>`` placeholders in the prompt match the row's images;
3. the judge (``--judge``): ``VLLM_SERVER_BASE_URL`` is set, every replica answers and serves ``VLLM_MODEL_NAME``;
4. GPUs (skipped with ``--dry-run`` and with ``--backend cpu``, where Ray gets logical GPUs): at least ``--gpus``
   visible to this node.

Exit 0 when everything passes; otherwise exit 1 and print ``preflight: error: ...`` (no traceback) to stderr.
It imports neither verl nor torch, so it takes well under a second.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REQUIRED_COLUMNS = ("prompt", "data_source", "reward_model", "extra_info")
IMAGE_PLACEHOLDER = "<image>"
_REWARD_KWARG = re.compile(r"^\+{0,2}reward\.reward_kwargs\.([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_LEGACY = re.compile(r"^[+~]{0,2}(custom_reward_function|reward_model)(\.|=|$)")


class PreflightError(Exception):
    """A failed check; its message is the one line the launcher shows."""


# ------------------------------------------------------------------ overrides


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def check_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """Reject legacy reward keys; validate ``reward.reward_kwargs.*``; return those settings."""
    from . import split_reward_kwargs

    settings: dict[str, str] = {}
    for item in overrides:
        if _LEGACY.match(item):
            raise PreflightError(
                f"override {item!r}: legacy reward keys are silently ignored by verl 0.9.1's main_ppo; "
                "use reward.* keys (e.g. reward.reward_kwargs.<setting>=<value>)"
            )
        match = _REWARD_KWARG.match(item)
        if match:
            settings[match.group(1)] = _unquote(match.group(2))
    try:
        split_reward_kwargs(settings)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    return settings


# ------------------------------------------------------------------ data


def _prompt_text(prompt: Any, where: str) -> str:
    if not isinstance(prompt, list) or not prompt:
        raise PreflightError(f"{where}: field 'prompt': expected a non-empty list of chat messages")
    texts = []
    for index, message in enumerate(prompt):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or not message.get("role"):
            raise PreflightError(
                f"{where}: field 'prompt[{index}]': expected {{'role': str, 'content': str}}, got {message!r:.80}"
            )
        texts.append(message["content"])
    return "\n".join(texts)


def _rows(path: Path, columns: list[str], batch_size: int = 512) -> Iterator[dict[str, Any]]:
    """Rows as dicts; ``images`` is replaced by its length (image bytes are never materialized)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
        data = {name: batch.column(name) for name in batch.schema.names}
        if "images" in data:
            lengths = pc.list_value_length(data.pop("images")).to_pylist()
        else:
            lengths = None
        table = {name: column.to_pylist() for name, column in data.items()}
        for i in range(batch.num_rows):
            row = {name: values[i] for name, values in table.items()}
            if lengths is not None:
                row["images"] = lengths[i]
            yield row


def check_data(path: str | os.PathLike[str], require_images: bool = True) -> int:
    """Validate one verl parquet file (see module doc); return its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..rewards.registry import registered_tasks

    file = Path(path)
    if not file.is_file():
        raise PreflightError(f"data file {file} does not exist (build it with `perception-r1 data ...`)")
    try:
        schema = pq.read_schema(file)
    except (pa.ArrowException, OSError) as exc:
        raise PreflightError(f"data file {file} is not a readable parquet file ({exc})") from None
    required = list(REQUIRED_COLUMNS) + (["images"] if require_images else [])
    missing = [name for name in required if name not in schema.names]
    if missing:
        raise PreflightError(f"data file {file}: missing column(s) {missing}; verl needs {required}")
    if require_images and not pa.types.is_list(schema.field("images").type):
        raise PreflightError(
            f"data file {file}: column 'images' must be a list of images, got {schema.field('images').type}"
        )

    tasks = registered_tasks()
    count = 0
    try:
        for index, row in enumerate(_rows(file, required)):
            count += 1
            where = f"data file {file} row {index}"
            source = row["data_source"]
            task = tasks.get(source) if isinstance(source, str) else None
            if task is None:
                raise PreflightError(
                    f"{where}: field 'data_source': {source!r} is not a registered task {sorted(tasks)}"
                )
            reward_model = row["reward_model"]
            if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
                raise PreflightError(f"{where}: field 'reward_model.ground_truth': missing")
            extra_info = row["extra_info"]
            if extra_info is not None and not isinstance(extra_info, dict):
                raise PreflightError(
                    f"{where}: field 'extra_info': expected a struct/dict, got {type(extra_info).__name__}"
                )
            try:
                task.validate(reward_model["ground_truth"], extra_info or {})
            except ValueError as exc:
                message = str(exc)
                if message.startswith("ground_truth"):
                    message = "reward_model." + message
                raise PreflightError(f"{where}: field {message}") from None
            text = _prompt_text(row["prompt"], where)
            if require_images:
                images = row["images"] or 0
                placeholders = text.count(IMAGE_PLACEHOLDER)
                if placeholders != images:
                    raise PreflightError(
                        f"{where}: field 'prompt': {placeholders} '{IMAGE_PLACEHOLDER}' placeholder(s) but "
                        f"{images} image(s) in 'images'"
                    )
    except (pa.ArrowException, OSError) as exc:
        raise PreflightError(f"data file {file} could not be read ({exc})") from None
    if count == 0:
        raise PreflightError(f"data file {file} has no rows")
    return count


# ------------------------------------------------------------------ judge and GPUs


def check_judge(timeout_s: float = 10.0) -> str:
    """The judge from the env vars answers and serves the configured model; returns a short description."""
    from ..judge.client import JudgeClient, JudgeSettings, JudgeUnavailable

    try:
        settings = JudgeSettings.from_env()
    except ValueError as exc:
        raise PreflightError(f"judge: {exc}") from None
    if settings is None:
        raise PreflightError(
            "judge: VLLM_SERVER_BASE_URL is not set; start the judge (bash examples/serve_judge.sh) and export "
            "VLLM_SERVER_BASE_URL, VLLM_MODEL_NAME and VLLM_SERVER_API_KEY"
        )
    try:
        JudgeClient(settings).preflight_sync(timeout_s)
    except JudgeUnavailable as exc:
        raise PreflightError(f"judge: {exc}") from None
    return f"{settings.model} at {','.join(settings.base_urls)}"


def visible_gpus() -> int:
    """GPUs this node can use: ``nvidia-smi -L`` entries, limited by ``CUDA_VISIBLE_DEVICES`` when set."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if out.returncode != 0:
        return 0
    count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip()]))
    return count


def check_gpus(required: int) -> int:
    count = visible_gpus()
    if count == 0:
        raise PreflightError(
            "no GPU found on this node (nvidia-smi lists none); training needs GPUs (DRY_RUN=1 skips this check)"
        )
    if count < required:
        raise PreflightError(f"N_GPUS_PER_NODE={required} but this node has {count} visible GPU(s)")
    return count


# ------------------------------------------------------------------ CLI


def run(args: argparse.Namespace) -> list[str]:
    """Run every check; return the lines to report on success."""
    report = []
    settings = check_overrides(args.overrides)
    if settings:
        report.append(f"reward settings {settings}")
    for path in args.data:
        rows = check_data(path, require_images=not args.no_images)
        report.append(f"data {path}: {rows} rows")
    if args.judge:
        report.append(f"judge {check_judge(args.judge_timeout)}")
    if args.dry_run:
        report.append("DRY_RUN=1: GPU check skipped")
    elif args.backend == "cpu":
        report.append(f"BACKEND=cpu: verl on the host CPU with {args.gpus or 1} logical GPU(s)")
    elif args.gpus:
        report.append(f"{check_gpus(args.gpus)} GPU(s)")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m perception_r1.verl_plugin.preflight", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", action="append", default=[], metavar="PARQUET", help="a verl parquet file (repeat)")
    parser.add_argument("--no-images", action="store_true", help="text-only data: no 'images' column required")
    parser.add_argument("--judge", action="store_true", help="check the judge from VLLM_SERVER_* env vars")
    parser.add_argument("--judge-timeout", type=float, default=10.0, help="seconds per judge replica (default 10)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs this node must have")
    parser.add_argument("--dry-run", action="store_true", help="skip the GPU check (DRY_RUN=1)")
    parser.add_argument(
        "--backend", choices=("gpu", "cpu"), default="gpu", help="cpu: no GPU check (BACKEND=cpu launchers)"
    )
    parser.add_argument("overrides", nargs="*", help="the hydra overrides of the run (after --)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except PreflightError as exc:
        print(f"preflight: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("preflight: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # still one line: the launcher must never show a traceback
        print(f"preflight: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"preflight: ok: {'; '.join(report)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
