"""Peak memory of ``perception-r1 score`` against the number of input rows (the goal: flat in N).

For each N it writes N GRPO-like geo3k rows (responses of 40-120 words, rule scoring plus math-verify in the worker
pool, no judge), runs one whole ``perception-r1 score`` process on them and reads its peak resident set size
(``ru_maxrss`` of the scoring process itself, and the largest of its worker processes). The file is written
row by row, so this script itself stays small.

    python benchmarks/bench_score_memory.py                     # N = 10000 and 200000
    python benchmarks/bench_score_memory.py --rows 10000 50000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import grpo_batch, machine_note, score_env, table  # noqa: E402

DEFAULT_ROWS = (10_000, 200_000)

# The scoring process reports its own peak RSS (and its largest child's) as one JSON line on stdout after main()
# returns: ``perception-r1 score`` writes nothing on stdout, so the line is unambiguous.
_WRAPPER = (
    "import json, resource, sys\n"
    "from perception_r1.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(json.dumps({'rc': rc, 'self_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " 'children_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    "sys.exit(rc)\n"
)


def write_rows(path: Path, n: int) -> int:
    """Write ``n`` rows (chunks of 4096 with distinct seeds); returns the file size in bytes."""
    written = 0
    chunk = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < n:
            rows = grpo_batch(prompts=512, group=8, seed=chunk, min_words=40, max_words=120)
            for row in rows[: n - written]:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += min(len(rows), n - written)
            chunk += 1
    return path.stat().st_size


def measure(inp: Path, out: Path, extra: Sequence[str] = ()) -> dict:
    """One whole ``score`` process: wall seconds and peak RSS in MiB (main process, largest worker)."""
    cmd = [sys.executable, "-c", _WRAPPER, "score", "--input", str(inp), "--output", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=score_env(), capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"score failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    stats = json.loads(lines[-1])
    return {"wall_s": wall, "main_mib": stats["self_kb"] / 1024, "worker_mib": stats["children_kb"] / 1024}


def run(repeats: int = 1, rows: Sequence[int] = DEFAULT_ROWS) -> dict:
    """Measure each N once (peak memory is not noisy the way time is); ``repeats`` is accepted for run_all.py."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_score_memory_") as tmp:
        for n in rows:
            inp, out = Path(tmp) / f"rows_{n}.jsonl", Path(tmp) / f"scores_{n}.jsonl"
            size = write_rows(inp, n)
            result = measure(inp, out)
            scored = sum(1 for _ in open(out, encoding="utf-8"))
            if scored != n:
                raise RuntimeError(f"{n} rows in, {scored} out")
            results.append({"rows": n, "input_mib": size / 2**20, **result})
            os.unlink(inp)
            os.unlink(out)
    body = [
        (f"{r['rows']:,}", r["input_mib"], r["main_mib"], r["worker_mib"], r["wall_s"], r["rows"] / r["wall_s"])
        for r in results
    ]
    headers = ["rows", "input MiB", "peak RSS score MiB", "peak RSS worker MiB", "wall s", "rows/s"]
    return {"results": results, "table": table(headers, body) + f"\n\n{machine_note()}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=list(DEFAULT_ROWS), help="input sizes to measure")
    args = parser.parse_args()
    print(run(rows=args.rows)["table"])


if __name__ == "__main__":
    main()
