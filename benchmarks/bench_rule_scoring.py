"""Benchmark (a): rule scoring of a 4096-response GRPO-like batch, ``perception-r1 score`` vs a plain scorer.

Both sides are whole processes, startup included. The plain scorer (``--plain``) is what one would write first:
row by row, format + math-verify ``parse``/``verify`` + n-gram, no memo, no worker pool. ``perception-r1 score``
memoizes (ground truth, answer) pairs and runs math-verify in a pool of hard-time-limited worker processes.
Both must produce the same numbers; the script checks that before reporting.

    python benchmarks/bench_rule_scoring.py [--prompts 512] [--group 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import grpo_batch, machine_note, run_timed, score_command, score_env, summarize, table, write_jsonl

TARGET_SPEEDUP = 3.0


def plain_score(inp: str, out: str) -> None:
    """The naive reference: one row after another, math-verify called directly, no memo, no cache, no pool.

    Same answer extraction, format and n-gram functions and the same weights as ``geo3k_visual``, so both sides
    must agree on every number.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    from perception_r1.rewards.format import format_reward
    from perception_r1.rewards.math_answer import extract_answer
    from perception_r1.rewards.ngram import ngram_penalty

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    def accuracy(ground_truth: str, answer: str) -> float:
        gold = parse(f"\\boxed{{{ground_truth}}}", extraction_config=configs, parsing_timeout=5)
        if not gold:
            gold = parse(ground_truth, extraction_config=configs, parsing_timeout=5)
        pred = parse(f"\\boxed{{{answer}}}", extraction_config=configs, parsing_timeout=5)
        if not gold or not pred:
            same = "".join(ground_truth.split()).rstrip(".") == "".join(answer.split()).rstrip(".")
            return 1.0 if same else 0.0
        return 1.0 if verify(gold, pred, timeout_seconds=5) else 0.0

    with open(inp, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            row = json.loads(line)
            response = row["response"]
            fmt = format_reward(response)
            answer = extract_answer(response)
            acc = accuracy(str(row["ground_truth"]), answer) if answer is not None else 0.0
            ngram = ngram_penalty(response, n=20, max_penalty=-2.0)
            score = 0.1 * fmt + 0.9 * acc + ngram
            dst.write(json.dumps({"score": score, "format": fmt, "accuracy": acc, "ngram_penalty": ngram}) + "\n")


def _check_same(plain_out: Path, ours_out: Path) -> int:
    """Rows where the two scorers disagree (must be 0)."""
    bad = 0
    for a, b in zip(plain_out.read_text().splitlines(), ours_out.read_text().splitlines(), strict=True):
        x, y = json.loads(a), json.loads(b)
        if any(abs(x[k] - y[k]) > 1e-9 for k in ("score", "format", "accuracy", "ngram_penalty")):
            bad += 1
    return bad


def run(prompts: int = 512, group: int = 8, repeats: int = 3) -> dict:
    """Time both scorers; returns the numbers and a markdown table."""
    rows = grpo_batch(prompts=prompts, group=group, seed=0)
    n = len(rows)
    unique = len({(r["ground_truth"], r["response"].rsplit("\\boxed{", 1)[-1][:40]) for r in rows})
    with tempfile.TemporaryDirectory(prefix="bench-rule-") as tmp:
        inp = write_jsonl(Path(tmp) / "rollouts.jsonl", rows)
        plain_out, ours_out = Path(tmp) / "plain.jsonl", Path(tmp) / "ours.jsonl"
        env = score_env()
        plain_cmd = [sys.executable, str(Path(__file__).resolve()), "--plain", str(inp), str(plain_out)]
        ours_cmd = score_command(inp, ours_out)
        # Alternate the two so load changes on a shared machine hit both alike.
        plain_runs, ours_runs = [], []
        for _ in range(repeats):
            plain_runs.append(run_timed(plain_cmd, env=env))
            ours_runs.append(run_timed(ours_cmd, env=env))
        plain, plain_walls = summarize(plain_runs)
        ours, ours_walls = summarize(ours_runs)
        mismatches = _check_same(plain_out, ours_out)
    speedup = plain.wall_s / ours.wall_s
    result = {
        "rows": n,
        "approx_unique_answers": unique,
        "plain_wall_s": plain.wall_s,
        "plain_cpu_s": plain.cpu_s,
        "ours_wall_s": ours.wall_s,
        "ours_cpu_s": ours.cpu_s,
        "plain_walls": plain_walls,
        "ours_walls": ours_walls,
        "speedup": speedup,
        "mismatches": mismatches,
        "meets_target": speedup >= TARGET_SPEEDUP and mismatches == 0,
    }
    result["table"] = table(
        ["scorer (whole process)", "rows", "wall s (median)", "CPU s", "rows/s", "all runs (wall s)"],
        [
            ["plain sequential", n, plain.wall_s, plain.cpu_s, n / plain.wall_s, _runs(plain_walls)],
            ["perception-r1 score", n, ours.wall_s, ours.cpu_s, n / ours.wall_s, _runs(ours_walls)],
        ],
    ) + (
        f"\n\nspeedup {speedup:.2f}x (target >= {TARGET_SPEEDUP:.0f}x: {'met' if result['meets_target'] else 'MISSED'}),"
        f" rows that disagree: {mismatches}; {machine_note()}"
    )
    return result


def _runs(walls: list[float]) -> str:
    return ", ".join(f"{w:.2f}" for w in walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain", nargs=2, metavar=("INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_score(*args.plain)
        return
    result = run(args.prompts, args.group, args.repeats)
    print("## (a) rule scoring, GRPO-like batch\n")
    print(result["table"])


if __name__ == "__main__":
    main()
