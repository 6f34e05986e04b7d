"""Benchmark (b): the judge path of ``perception-r1 score`` against a local OpenAI-compatible server.

N annotated rows (GRPO-like geo3k batch), at most K concurrent requests, the scripted ``OpenAITestServer`` in its
own process with an injected latency L. Two targets:

- latency hidden: ``T(L=50 ms) - T(L=0) <= 1.25 * ceil(N/K) * L``;
- overhead: ``T(L=0) <= 3 * T_bare + 2 s``, where ``T_bare`` is a bare aiohttp client sending the same requests
  (same messages, same K) and ``T`` is the whole ``perception-r1 score`` process (startup, rule scoring and
  math-verify included).

    python benchmarks/bench_judge.py [--rows 4096] [--concurrency 64] [--latency-ms 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ServerProcess,
    Timing,
    grpo_batch,
    machine_note,
    run_timed,
    score_command,
    score_env,
    table,
    write_jsonl,
)


async def _bare(base_url: str, inp: str, concurrency: int) -> float:
    """Send every row's judge request with plain aiohttp; returns the seconds spent on the requests."""
    import aiohttp

    from perception_r1.judge.visual import build_visual_messages, reply_budget

    rows = [json.loads(line) for line in open(inp, encoding="utf-8")]
    requests = [
        {
            "model": "judge",
            "messages": build_visual_messages(r["extra_info"]["visual_annotations"], r["response"]),
            "temperature": 0.0,
            "max_tokens": reply_budget(len(r["extra_info"]["visual_annotations"])),
        }
        for r in rows
    ]
    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: dict) -> str:
            async with semaphore:
                async with session.post(f"{base_url}/chat/completions", json=body) as response:
                    payload = await response.json()
                    return payload["choices"][0]["message"]["content"]

        replies = await asyncio.gather(*(one(b) for b in requests))
    elapsed = time.perf_counter() - start
    assert all(isinstance(r, str) for r in replies)
    return elapsed


def _score_run(inp: Path, out: Path, base_url: str | None, concurrency: int) -> Timing:
    extra = ["--judge-base-url", base_url, "--judge-model", "judge", "--judge-max-concurrency", str(concurrency)]
    # rules only: the annotated rows knowingly go without a judge (otherwise `score` refuses to run)
    no_judge = ["--max-judge-failure-rate", "1"]
    return run_timed(score_command(inp, out, *(extra if base_url else no_judge)), env=score_env())


def _bare_run(inp: Path, base_url: str, concurrency: int) -> tuple[Timing, float]:
    """Run the bare client in its own process; whole-process timing and its in-process request time."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare", base_url, str(inp), str(concurrency)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=score_env())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"bare client failed:\n{proc.stderr[-3000:]}")
    return Timing(wall, float("nan")), float(proc.stdout.strip().splitlines()[-1])


def _judge_failed(out: Path) -> int:
    return sum(json.loads(line)["judge_failed"] for line in out.read_text().splitlines())


def run(rows: int = 4096, concurrency: int = 64, latency_ms: float = 50.0, repeats: int = 3) -> dict:
    """Time rule-only, judged (L=0, L) and bare-client runs; returns the numbers and a markdown table."""
    prompts = max(1, rows // 8)
    batch = grpo_batch(prompts=prompts, group=8, seed=1, annotated=True)[:rows]
    n = len(batch)
    latency_s = latency_ms / 1000.0
    waves = math.ceil(n / concurrency)
    with tempfile.TemporaryDirectory(prefix="bench-judge-") as tmp:
        inp = write_jsonl(Path(tmp) / "rollouts.jsonl", batch)
        out = Path(tmp) / "scores.jsonl"
        walls: dict[str, list[float]] = {"rules": [], "L0": [], "L": [], "bare": [], "bare_proc": []}
        failed = 0
        with ServerProcess(latency_s=0.0) as fast, ServerProcess(latency_s=latency_s) as slow:
            _score_run(inp, out, fast.base_url, concurrency)  # warm the OS file cache and both servers
            for _ in range(repeats):  # interleaved so load changes on a shared machine hit all alike
                walls["rules"].append(_score_run(inp, out, None, concurrency).wall_s)
                walls["L0"].append(_score_run(inp, out, fast.base_url, concurrency).wall_s)
                failed += _judge_failed(out)
                walls["L"].append(_score_run(inp, out, slow.base_url, concurrency).wall_s)
                failed += _judge_failed(out)
                proc, inner = _bare_run(inp, fast.base_url, concurrency)
                walls["bare"].append(inner)
                walls["bare_proc"].append(proc.wall_s)
    med = {k: statistics.median(v) for k, v in walls.items()}
    # Pairwise differences of interleaved runs are less sensitive to load drift than a difference of medians.
    hidden_cost = statistics.median(b - a for a, b in zip(walls["L0"], walls["L"], strict=True))
    hidden_budget = 1.25 * waves * latency_s
    overhead_budget = 3 * med["bare"] + 2.0
    result = {
        "rows": n,
        "concurrency": concurrency,
        "latency_ms": latency_ms,
        "medians": med,
        "runs": walls,
        "latency_cost_s": hidden_cost,
        "latency_budget_s": hidden_budget,
        "overhead_budget_s": overhead_budget,
        "judge_failed": failed,
        "latency_hidden": hidden_cost <= hidden_budget,
        "overhead_ok": med["L0"] <= overhead_budget,
    }
    result["table"] = table(
        ["run", "wall s (median)", "all runs (wall s)"],
        [
            ["`score`, rules only (no judge)", med["rules"], _runs(walls["rules"])],
            ["`score` + judge, L = 0", med["L0"], _runs(walls["L0"])],
            [f"`score` + judge, L = {latency_ms:g} ms", med["L"], _runs(walls["L"])],
            ["bare aiohttp client, requests only", med["bare"], _runs(walls["bare"])],
            ["bare aiohttp client, whole process", med["bare_proc"], _runs(walls["bare_proc"])],
        ],
    ) + (
        f"\n\nN = {n}, K = {concurrency}, ceil(N/K) = {waves}.\n"
        f"latency hidden: T(L) - T(0) = {hidden_cost:.2f} s <= 1.25 x {waves} x {latency_s:g} s = {hidden_budget:.2f} s:"
        f" {'met' if result['latency_hidden'] else 'MISSED'}\n"
        f"overhead: T(0) = {med['L0']:.2f} s <= 3 x {med['bare']:.2f} + 2 = {overhead_budget:.2f} s:"
        f" {'met' if result['overhead_ok'] else 'MISSED'}\n"
        f"judge_failed rows over all judged runs: {failed}; {machine_note()}"
    )
    return result


def _runs(walls: list[float]) -> str:
    return ", ".join(f"{w:.2f}" for w in walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bare", nargs=3, metavar=("BASE_URL", "INPUT", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        base_url, inp, k = args.bare
        print(f"{asyncio.run(_bare(base_url, inp, int(k))):.4f}")
        return
    result = run(args.rows, args.concurrency, args.latency_ms, args.repeats)
    print("## (b) judge path\n")
    print(result["table"])


if __name__ == "__main__":
    main()
