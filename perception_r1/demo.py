"""``python -m perception_r1.demo`` (``make demo``): the whole training job on any machine, in minutes, on the CPU.

It runs the path a GPU user pays for, end to end, with nothing mocked: a tiny randomly initialised Qwen2-VL with the
real Qwen vocabulary and processor (:mod:`perception_r1.testing.tiny_model`), the Geometry3K rows shipped in the
package built into verl parquet by ``perception-r1 data geo3k``, a scripted judge on a real socket, and verl 0.9.1's
own trainer started through the **same launcher as the GPU run** (``examples/run_qwen2_5_vl_7b_geo3k_visual.sh`` →
``examples/common.sh`` → preflight → ``perception_r1.verl_plugin.main_ppo``) with ``BACKEND=cpu``. It validates
before training, trains ``--steps`` GRPO steps (rollout, reward with the judge, advantages, actor update, weight
sync), saves a checkpoint at the last step, turns it into a Hugging Face folder with ``python -m verl.model_merger``
and checks that ``transformers`` loads and generates from it.

The judge is :func:`perception_r1.testing.openai_server.hash_judge`: deterministic pseudo-random verdicts, so the
random policy's rollouts get *different* visual rewards and GRPO has a non-zero signal. It measures nothing.

Everything lands under ``--out`` (default ``outputs/demo``): ``train.log`` (the console), ``metrics.jsonl`` (every
logged metric, one line per step), ``checkpoints/``, ``merged_model/``, ``rollouts/`` (verl's rollout dumps) and
``summary.json`` = ``{"steps": [{"step", "reward/score/mean", ..., every logged metric}], "val": {...},
"checkpoint": path, "merged_model": path, ...}``. ``--resume`` (``RESUME=1 make demo``) continues from the latest
checkpoint up to ``--steps`` instead of starting over. Exit code 0 on success; otherwise one line saying which phase
failed and the end of the log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_BACKEND_ENV = {"VERL_PLATFORM": "cpu", "VERL_USE_EXTERNAL_MODULES": "perception_r1.verl_plugin.cpu"}
JUDGE_MODEL = "demo-hash-judge"
MAX_PIXELS = 12544  # 16 merged image tokens at most: keeps prompts short on 2 cores
KEY_METRICS = ("reward/score/mean", "reward/visual/mean", "reward/accuracy/mean", "actor/grad_norm", "timing_s/step")
_STEP_LINE = re.compile(r"step:(\d+) - (.*)$")


class DemoError(RuntimeError):
    """A failed phase; its message is the one line the demo prints."""


def _say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def _atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, default=float)
        handle.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- phases


def geo3k_rows() -> Path:
    """The 10 Geometry3K problems shipped in the package (``perception_r1/testing/data/geometry3k``)."""
    return Path(str(resources.files("perception_r1.testing") / "data" / "geometry3k" / "problems.jsonl"))


def build_data(out: Path, python: str) -> Path:
    """``perception-r1 data geo3k`` on the shipped rows (diagram logic forms as the visual annotations)."""
    target = out / "data" / "geo3k_train.parquet"
    command = [
        python, "-m", "perception_r1", "data", "geo3k",
        "--input", str(geo3k_rows()),
        "--annotations-field", "logic_forms",
        "--max-pixels", str(MAX_PIXELS),
        "--output", str(target),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise DemoError(f"building the geo3k parquet failed: {result.stderr.strip().splitlines()[-1:]}")
    return target


def training_overrides(out: Path, steps: int, resume: bool) -> list[str]:
    """The demo's hydra overrides: the geo3k launcher's run, shrunk (batch, lengths, steps), never re-routed."""
    return [
        "data.train_batch_size=2",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "data.max_prompt_length=512",
        "data.max_response_length=48",
        f"++data.mm_processor_kwargs.max_pixels={MAX_PIXELS}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        f"trainer.total_training_steps={steps}",
        f"trainer.test_freq={steps}",
        f"trainer.save_freq={steps}",
        "trainer.val_before_train=True",
        "data.val_max_samples=4",
        "trainer.logger=[console,file,swanlab]",
        "trainer.experiment_name=demo_geo3k",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        f"trainer.rollout_data_dir={out / 'rollouts'}",
        f"trainer.resume_mode={'auto' if resume else 'disable'}",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "reward.num_workers=1",
        "data.dataloader_num_workers=0",
    ]


def latest_checkpoint_step(checkpoints: Path) -> int | None:
    """verl's ``latest_checkpointed_iteration.txt`` under ``checkpoints`` (``None`` when there is none)."""
    marker = checkpoints / "latest_checkpointed_iteration.txt"
    try:
        return int(marker.read_text().strip())
    except (OSError, ValueError):
        return None


def _condensed(metrics_text: str) -> str:
    fields = dict(part.split(":", 1) for part in metrics_text.split(" - ") if ":" in part)
    shown = []
    for key in KEY_METRICS:
        if key in fields:
            value = re.sub(r"np\.\w+\((.*)\)", r"\1", fields[key])
            try:
                value = f"{float(value):.4g}"
            except ValueError:
                pass
            shown.append(f"{key}={value}")
    return " ".join(shown)


def run_training(
    out: Path,
    steps: int,
    resume: bool,
    judge_url: str,
    python: str,
    timeout_s: float,
    model: Path,
    data: Path,
    extra_overrides: Sequence[str] = (),
    judge_model: str = JUDGE_MODEL,
) -> int:
    """The geo3k launcher with ``BACKEND=cpu``; streams the console to ``train.log``; returns the exit code.

    ``extra_overrides`` come after the demo's own (tests use them to change the judge policy or the schedule).
    """
    launcher = REPO_ROOT / "examples" / "run_qwen2_5_vl_7b_geo3k_visual.sh"
    if not launcher.is_file():
        raise DemoError(f"{launcher} not found: run the demo from a source checkout of perception-r1")
    env = {
        **os.environ,
        **CPU_BACKEND_ENV,
        "BACKEND": "cpu",
        "PYTHON": python,
        "MODEL_PATH": str(model),
        "TRAIN_FILE": str(data),
        "VAL_FILE": str(data),
        "NNODES": "1",
        "N_GPUS_PER_NODE": "1",
        "VLLM_SERVER_BASE_URL": judge_url,
        "VLLM_MODEL_NAME": judge_model,
        "VLLM_SERVER_API_KEY": "EMPTY",
        "VERL_FILE_LOGGER_PATH": str(out / "metrics.run.jsonl"),
        "SWANLAB_MODE": "local",
        "SWANLAB_LOG_DIR": str(out / "swanlog"),
        "PYTHONUNBUFFERED": "1",
    }
    env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    command = ["bash", str(launcher), *training_overrides(out, steps, resume), *extra_overrides]
    log_path = out / "train.log"
    with open(log_path, "a" if resume else "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # Ray's processes too: a timeout kills the whole group
        )
        deadline = time.monotonic() + timeout_s
        assert process.stdout is not None
        try:
            for line in process.stdout:
                log.write(line)
                match = _STEP_LINE.search(line)
                shown = _condensed(match.group(2)) if match else ""
                if shown:  # a resumed run's validation line carries no training metrics
                    _say(f"[train] step {match.group(1)}/{steps}: {shown}")
                elif "preflight: " in line:
                    _say(f"[train] {line.strip()}")
                if time.monotonic() > deadline:
                    raise TimeoutError
            return process.wait()
        except (TimeoutError, KeyboardInterrupt) as exc:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise DemoError(f"training did not finish within {timeout_s:.0f} s (see {log_path})") from None


def read_metrics(path: Path) -> dict[int, dict[str, Any]]:
    """verl's ``file`` logger output: ``{step: {metric: value}}`` (later lines for a step update earlier ones)."""
    steps: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return steps
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            steps.setdefault(int(record["step"]), {}).update(record["data"])
    return steps


def merge_checkpoint(checkpoint: Path, target: Path, python: str) -> None:
    """``python -m verl.model_merger merge --backend fsdp`` (the CPU backend loads the processor without torchvision)."""
    if target.exists():
        shutil.rmtree(target)
    command = [
        python, "-m", "verl.model_merger", "merge",
        "--backend", "fsdp", "--local_dir", str(checkpoint), "--target_dir", str(target),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **CPU_BACKEND_ENV})
    if result.returncode != 0 or not (target / "config.json").is_file():
        tail = result.stderr.strip().splitlines()[-1:] if result.stderr else []
        raise DemoError(f"merging {checkpoint} into a Hugging Face folder failed: {tail}")


def check_merged_model(merged: Path, initial: Path) -> dict[str, Any]:
    """Load the merged folder with ``transformers``, generate a few tokens, and measure how far training moved it."""
    import torch
    from transformers import AutoModelForImageTextToText

    from .testing.qwen_processor import load_qwen_vl_processor

    model = AutoModelForImageTextToText.from_pretrained(merged, dtype=torch.float32, attn_implementation="eager")
    before = AutoModelForImageTextToText.from_pretrained(initial, dtype=torch.float32, attn_implementation="eager")
    processor = load_qwen_vl_processor(merged)
    text = processor.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=False
    )
    inputs = processor(text=[text], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1] :].tolist()
    initial_state = before.state_dict()
    moved = max(float((value - initial_state[name]).abs().max()) for name, value in model.state_dict().items())
    return {"generated_tokens": len(new_tokens), "max_abs_weight_change": moved}


# ---------------------------------------------------------------------------------------------- driver


def _val_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k.startswith("val-")}


def summarize(out: Path, steps: dict[int, dict[str, Any]], resumed_from: int | None) -> dict[str, Any]:
    """``summary.json``: every training step's metrics, the validation blocks, the checkpoint and the merged model."""
    train_steps = []
    for step in sorted(s for s in steps if s > 0):
        metrics = {k: v for k, v in steps[step].items() if not k.startswith("val-")}
        train_steps.append({"step": step, **metrics})
    val = {f"step_{step}": _val_metrics(m) for step, m in sorted(steps.items()) if _val_metrics(m)}
    latest = latest_checkpoint_step(out / "checkpoints")
    return {
        "steps": train_steps,
        "val": val,
        "checkpoint": str(out / "checkpoints" / f"global_step_{latest}") if latest is not None else None,
        "merged_model": str(out / "merged_model"),
        "resumed_from": resumed_from,
    }


def _check_summary(summary: dict[str, Any], steps: int) -> None:
    got = [s["step"] for s in summary["steps"]]
    if not got or got[-1] != steps:
        raise DemoError(f"expected training steps up to {steps}, the run logged {got}")
    for entry in summary["steps"]:
        for key in ("reward/score/mean", "reward/visual/mean", "actor/grad_norm"):
            value = entry.get(key)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DemoError(f"step {entry['step']}: {key} = {value!r}, expected a finite number")
    if not summary["val"]:
        raise DemoError("the run logged no validation metrics")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .testing.openai_server import OpenAITestServer, hash_judge
    from .testing.tiny_model import save_tiny_qwen2_vl

    out = Path(args.out).resolve()
    python = args.python or sys.executable
    checkpoints = out / "checkpoints"
    resumed_from = latest_checkpoint_step(checkpoints) if args.resume else None
    if args.resume:
        if resumed_from is None:
            raise DemoError(f"--resume: no checkpoint under {checkpoints} (run the demo once without it first)")
        if resumed_from >= args.steps:
            raise DemoError(
                f"--resume: the checkpoint is at step {resumed_from}; ask for more steps (--steps {resumed_from + 1})"
            )
    else:
        for stale in ("checkpoints", "rollouts", "merged_model", "metrics.jsonl", "summary.json"):
            path = out / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    _say("[1/6] model: tiny random Qwen2-VL, real Qwen vocabulary and processor")
    model = save_tiny_qwen2_vl(out / "model")
    _say("[2/6] data: Geometry3K rows -> verl parquet (perception-r1 data geo3k)")
    data = build_data(out, python)
    _say("[3/6] judge: scripted hash judge on a local socket")
    with OpenAITestServer(models=[JUDGE_MODEL], responder=hash_judge, record=False) as judge:
        what = f"resume from step {resumed_from} to step {args.steps}" if args.resume else f"{args.steps} steps"
        _say(f"[4/6] train: verl's trainer through the geo3k launcher, BACKEND=cpu, {what} (log: {out / 'train.log'})")
        (out / "metrics.run.jsonl").unlink(missing_ok=True)
        code = run_training(out, args.steps, args.resume, judge.base_url, python, args.timeout, model, data)
    if code != 0:
        tail = (out / "train.log").read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise DemoError(f"training exited with code {code} (full log: {out / 'train.log'})")
    # The file logger truncates its file per run; metrics.jsonl accumulates runs (a resume appends its steps).
    run_lines = (out / "metrics.run.jsonl").read_text(encoding="utf-8")
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(run_lines)
    (out / "metrics.run.jsonl").unlink()
    summary = summarize(out, read_metrics(out / "metrics.jsonl"), resumed_from)
    _check_summary(summary, args.steps)

    latest = latest_checkpoint_step(checkpoints)
    _say(f"[5/6] merge: checkpoint step {latest} -> Hugging Face folder (python -m verl.model_merger)")
    merge_checkpoint(checkpoints / f"global_step_{latest}" / "actor", out / "merged_model", python)
    summary["merged_model_check"] = check_merged_model(out / "merged_model", model)
    summary["seconds"] = round(time.monotonic() - started, 1)
    _say("[6/6] summary")
    _atomic_write_json(out / "summary.json", summary)
    for entry in summary["steps"]:
        shown = " ".join(f"{k}={entry[k]:.4g}" for k in KEY_METRICS if isinstance(entry.get(k), (int, float)))
        _say(f"  step {entry['step']}: {shown}")
    _say(f"  merged model: {summary['merged_model']} {summary['merged_model_check']}")
    _say(f"done in {summary['seconds']:.0f} s: {out / 'summary.json'}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m perception_r1.demo",
        description="Train a tiny Qwen2-VL with GRPO through verl's own trainer on the CPU (the quickstart).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default=os.environ.get("OUT", "outputs/demo"), help="output folder")
    parser.add_argument("--steps", type=int, default=int(os.environ.get("STEPS", "2")), help="total training steps")
    parser.add_argument(
        "--resume",
        action="store_true",
        default=os.environ.get("RESUME", "0") == "1",
        help="continue from the latest checkpoint under OUT (env RESUME=1)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed for the training phase")
    parser.add_argument("--python", default=None, help="interpreter for the launcher (default: this one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1:
        print("demo: error: --steps must be at least 1", file=sys.stderr)
        return 2
    try:
        run(args)
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
