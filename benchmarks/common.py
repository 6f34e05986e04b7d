"""Shared pieces of the benchmarks: a GRPO-like rollout batch, process timing, a separate judge server, tables.

Every benchmark times whole processes (``perception-r1 score`` included its startup), repeats each measurement and
reports the median, because the machine may be shared and single runs are noisy.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PERCEPTION_R1_SHARED_DATA", REPO.parent / "shared" / "data"))
DATA_SOURCE = "geo3k_visual"

# ----------------------------------------------------------------------------------------------- the batch

_SYNTHETIC_ANSWERS = [
    ("13", ["13", "13.0", "x = 13"], ["12", "14"]),
    ("5 \\sqrt { 3 }", ["5\\sqrt{3}", "5 \\sqrt 3"], ["5\\sqrt{2}", "10"]),
    (
        "\\frac { 2 \\sqrt { 2 } } { 5 }",
        ["\\frac{2\\sqrt{2}}{5}", "\\frac{2\\sqrt2}{5}"],
        ["\\frac{\\sqrt{2}}{5}", "0.5"],
    ),
    ("13.5", ["13.5", "\\frac{27}{2}"], ["12", "27"]),
    ("120", ["120", "120^\\circ"], ["60", "30"]),
]
_WORDS = (
    "triangle angle side segment line circle chord arc radius diameter tangent parallel perpendicular bisector "
    "median altitude vertex point area perimeter similar congruent ratio proportion theorem sum interior exterior "
    "supplementary complementary isosceles equilateral right hypotenuse leg opposite adjacent sine cosine tangent "
    "therefore hence since because given find compute solve substitute equation value length measure degrees so "
    "then we know that the of and is are to with by from in on at this gives implies thus"
).split()
_LOOP = "wait, let me recheck the angle sum of the triangle again because the value seems wrong "


def _answers_from_geometry3k() -> list[tuple[str, list[str], list[str]]]:
    """(ground truth, equivalent forms, wrong answers) from the real Geometry3K problems when available."""
    path = SHARED_DATA / "geometry3k" / "problems.jsonl"
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            wrong = [c for c in row["choices"] if c != row["answer"]][:2]
            out.append((row["answer"], [row["answer"], "".join(row["answer"].split())], wrong))
    return out


def _annotations_from_geometry3k() -> list[list[str]]:
    path = SHARED_DATA / "geometry3k" / "problems.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [[f for f in row["logic_forms"] if f.strip()][:6] for row in rows]


def _think(rng: random.Random, words: int, facts: Sequence[str]) -> str:
    out: list[str] = []
    while len(out) < words:
        sentence = rng.choices(_WORDS, k=rng.randint(8, 16))
        sentence.append(f"{rng.choice('ABCDEFGHJK')}{rng.choice('LMNPQRSTXY')} = {rng.randint(1, 99)}.")
        out.extend(sentence)
    text = " ".join(out[:words])
    # State some annotated facts verbatim so a substring judge finds a varying share of them.
    stated = [f for f in facts if rng.random() < 0.6]
    return text + ("\nFrom the diagram: " + "; ".join(stated) + "." if stated else "")


def grpo_batch(
    prompts: int = 512,
    group: int = 8,
    seed: int = 0,
    annotated: bool = False,
    min_words: int = 300,
    max_words: int = 900,
) -> list[dict[str, Any]]:
    """A GRPO-like rollout batch: ``prompts`` x ``group`` geo3k responses of ``min_words``-``max_words`` words.

    Answers repeat within a group (equivalent and wrong forms), ~6% responses are degenerate loops (truncated, no
    answer), ~4% break the format. ``annotated`` adds 2-6 visual annotations per prompt (real Geometry3K logic forms
    when ``../shared/data`` is present).
    """
    rng = random.Random(seed)
    answers = _answers_from_geometry3k() + _SYNTHETIC_ANSWERS
    annotation_pool = _annotations_from_geometry3k() or [["AB = 12", "∠ACB = 30°", "AC = BC", "GE ⊥ DF"]]
    rows = []
    for p in range(prompts):
        ground_truth, equivalent, wrong = answers[p % len(answers)]
        if p >= len(answers):  # vary the numbers so prompts do not share memo keys across the batch
            shift = p // len(answers)
            if ground_truth.replace(".", "", 1).isdigit():
                value = float(ground_truth) + shift
                ground_truth = f"{value:g}"
                equivalent = [ground_truth, f"{value:.1f}", f"x = {ground_truth}"]
                wrong = [f"{value + 1:g}", f"{value * 2:g}"]
            else:
                equivalent = [*equivalent]
        candidates = [equivalent[0], equivalent[-1], *wrong]
        weights = [5, 2, 2, 1]
        facts = annotation_pool[p % len(annotation_pool)]
        facts = facts[: rng.randint(2, max(2, len(facts)))]
        extra_info = {"visual_annotations": list(facts)} if annotated else {}
        for _ in range(group):
            words = rng.randint(min_words, max_words)
            kind = rng.random()
            if kind < 0.06:  # degenerate loop, truncated at the length limit
                loop_words = _LOOP.split()
                text = " ".join((loop_words * (max_words // len(loop_words) + 1))[:words])
                response = f"<think>\n{text}"
            else:
                answer = rng.choices(candidates, weights)[0]
                think = _think(rng, words, facts)
                if kind < 0.10:  # broken format: the boxed answer outside the answer block
                    response = f"<think>\n{think}\n</think>\nThe answer is \\boxed{{{answer}}}."
                else:
                    response = f"<think>\n{think}\n</think>\n<answer>\nThe answer is \\boxed{{{answer}}}.\n</answer>"
            rows.append(
                {
                    "data_source": DATA_SOURCE,
                    "response": response,
                    "ground_truth": ground_truth,
                    "extra_info": extra_info,
                }
            )
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# ------------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    wall_s: float
    cpu_s: float  # user + sys of the child (and its children)


def run_timed(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600) -> Timing:
    """Run ``cmd`` to completion; wall and child CPU seconds. Raises with its stderr when it fails."""
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return Timing(wall, cpu)


def summarize(runs: Sequence[Timing]) -> tuple[Timing, list[float]]:
    """The median wall/CPU of ``runs`` and every wall time."""
    walls = [r.wall_s for r in runs]
    return Timing(statistics.median(walls), statistics.median(r.cpu_s for r in runs)), walls


def score_env() -> dict[str, str]:
    """Environment of a ``perception-r1 score`` run: no progress bar, no judge unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_SERVER_", "VLLM_MODEL_NAME", "JUDGE_"))}
    env["PERCEPTION_R1_NO_PROGRESS"] = "1"
    return env


def score_command(inp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "perception_r1", "score", "--input", str(inp), "--output", str(out), *extra]


# ------------------------------------------------------------------------------------------ judge server


class ServerProcess:
    """``OpenAITestServer`` in its own process (so it does not share the scorer's GIL)."""

    def __init__(self, latency_s: float = 0.0, model: str = "judge") -> None:
        self.latency_s = latency_s
        self.model = model
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from perception_r1.testing.openai_server import main; main()",
                "--port",
                "0",
                "--model",
                self.model,
                "--latency",
                str(self.latency_s),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"at (http://\S+)", line)
        if not match:
            self.__exit__()
            raise RuntimeError(f"judge server did not start: {line!r}")
        self.base_url = match.group(1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------------------------- tables


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table (printed, and pasted into docs/benchmarks.md)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def machine_note() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPUs, load average {load:.1f} at start, Python {sys.version.split()[0]}"
