"""Per-module mutation score from mutmut's results (``mutants/**/*.py.meta``), for ``make mutation``.

Usage: ``python tools/mutation_report.py [--markdown] [--survivors] [MODULE_GLOB ...]`` from the repository root.

A mutant is *caught* when a test failed on it (mutmut: killed, timeout, caught by type check); *survived* and
*no tests* (no selected test runs the mutated function) are not caught; *not checked* mutants (not yet run, e.g. a
run restricted to other modules) are left out and counted separately. Equivalent mutants are not generated at all:
they are marked ``# pragma: no mutate`` in the source with the reason, and the ``excluded`` column counts those
marks per module.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

# mutmut's exit-code meanings (mutmut.stats.status_by_exit_code, 3.8.1)
CAUGHT = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          37: "caught by type check"}  # fmt: skip
NOT_CAUGHT = {0: "survived", 5: "no tests", 33: "no tests"}
SKIPPED = {34: "skipped"}


def module_of(meta: Path, root: Path) -> str:
    rel = meta.relative_to(root / "mutants").as_posix()
    return rel[: -len(".py.meta")].replace("/", ".")


def load(root: Path) -> dict[str, dict[str, int | None]]:
    """``{module: {mutant_name: exit_code}}`` for every mutated file mutmut recorded."""
    out = {}
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        out[module_of(meta, root)] = data.get("exit_code_by_key", {})
    return out


def excluded_marks(root: Path, module: str) -> int:
    path = root / (module.replace(".", "/") + ".py")
    if not path.exists():
        return 0
    return sum("pragma: no mutate" in line for line in path.read_text().splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module globs (default: every mutated module)")
    parser.add_argument("--root", default=".", help="repository root (holds mutants/)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--survivors", action="store_true", help="list the mutants not caught")
    parser.add_argument(
        "--names",
        action="store_true",
        help="print only the names of the mutants not caught yet (not run, survived, no tests), one per line, for "
        "`xargs -a FILE mutmut run` (named mutants are always re-run)",
    )
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    results = load(root)
    if not results:
        print("no mutmut results under mutants/: run `make mutation` first", file=sys.stderr)
        return 1
    rows = []
    totals = Counter()
    survivors = []
    not_caught = []  # survived, no tests or not run yet: what a next ``mutmut run`` should be given
    for module, codes in results.items():
        if args.modules and not any(fnmatch.fnmatch(module, g) for g in args.modules):
            continue
        if not codes:
            continue
        c = Counter()
        for name, code in codes.items():
            if code is None:
                c["unchecked"] += 1
                not_caught.append(name)
            elif code in CAUGHT:
                c["caught"] += 1
            elif code in SKIPPED:
                c["skipped"] += 1
            else:
                c["no_tests" if NOT_CAUGHT.get(code) == "no tests" else "survived"] += 1
                survivors.append((name, NOT_CAUGHT.get(code, f"suspicious (exit {code})")))
                not_caught.append(name)
        checked = c["caught"] + c["survived"] + c["no_tests"]
        rows.append((module, c, checked, excluded_marks(root, module)))
        totals.update(c)
    if args.names:
        for name in not_caught:
            print(name)
        return 0
    if args.markdown:
        print("| module | caught / checked | % | survived | no tests | not run | equivalent (no-mutate marks) |")
        print("|---|---|---|---|---|---|---|")
    else:
        print(f"{'module':<44} {'caught':>7} {'checked':>8} {'%':>6} {'surv':>5} {'notest':>6} {'unrun':>6} {'excl':>5}")
    for module, c, checked, excl in rows:
        pct = f"{100.0 * c['caught'] / checked:.1f}" if checked else "-"
        if args.markdown:
            print(f"| {module} | {c['caught']} / {checked} | {pct} | {c['survived']} | {c['no_tests']} "
                  f"| {c['unchecked']} | {excl} |")  # fmt: skip
        else:
            print(f"{module:<44} {c['caught']:>7} {checked:>8} {pct:>6} {c['survived']:>5} {c['no_tests']:>6} "
                  f"{c['unchecked']:>6} {excl:>5}")  # fmt: skip
    checked = totals["caught"] + totals["survived"] + totals["no_tests"]
    if checked and not args.markdown:
        print(f"{'total':<44} {totals['caught']:>7} {checked:>8} {100.0 * totals['caught'] / checked:>6.1f}")
    if args.survivors:
        print()
        for name, status in survivors:
            print(f"{status:>10}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
