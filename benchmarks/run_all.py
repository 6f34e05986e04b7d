"""Run every benchmark and print its table: ``python benchmarks/run_all.py [--quick] [--only NAME ...]``.

Benchmarks are whole ``perception-r1 score`` processes on this machine; each prints a markdown table that goes
into ``docs/benchmarks.md``. ``--quick`` uses fewer repeats (a smoke run, not numbers to publish). A module
``bench_perception.py`` beside this file, when present, is run too (its ``run(repeats=...)`` returns a dict with a
``table``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BENCHMARKS = {
    "rule_scoring": ("bench_rule_scoring", "(a) rule scoring of a 4096-response GRPO-like batch"),
    "judge": ("bench_judge", "(b) judge path, N = 4096, K = 64, L = 0 / 50 ms"),
    "perception": ("bench_perception", "perception tasks"),
    "agreement": ("bench_reward_metric_agreement", "reward–metric agreement of the perception rewards (not timed)"),
    "score_memory": ("bench_score_memory", "peak memory of `score`, N = 10,000 and 200,000 rows"),
    "prompt_filter": ("bench_prompt_filter", "verl's prompt-length filter on COCO detection rows (launch start-up)"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat each (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 3)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--json", type=Path, help="also write every result as JSON here")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    results: dict[str, dict] = {}
    failed = []
    for name, (module_name, title) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        if not (HERE / f"{module_name}.py").exists():
            print(f"## {title}\n\n(skipped: benchmarks/{module_name}.py not present)\n", flush=True)
            continue
        start = time.perf_counter()
        try:
            result = importlib.import_module(module_name).run(repeats=repeats)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        results[name] = result
        print(f"## {title}\n\n{result['table']}\n\n({time.perf_counter() - start:.0f} s)\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
