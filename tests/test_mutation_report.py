"""``tools/mutation_report.py`` reads mutmut's result files: per-module counts and the names still to run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def report():
    spec = importlib.util.spec_from_file_location("mutation_report", REPO / "tools" / "mutation_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def results(root: Path) -> Path:
    meta = root / "mutants" / "pkg" / "mod.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {"pkg.mod.x_f__mutmut_1": 1, "pkg.mod.x_f__mutmut_2": 0, "pkg.mod.x_f__mutmut_3": None,
             "pkg.mod.x_f__mutmut_4": 33, "pkg.mod.x_f__mutmut_5": 36, "pkg.mod.x_f__mutmut_6": 34}  # fmt: skip
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    other = root / "mutants" / "pkg" / "other.py.meta"
    other.write_text(json.dumps({"exit_code_by_key": {"pkg.other.x_g__mutmut_1": 0}}))
    return root


def test_names_lists_what_is_not_caught_yet_in_the_selected_modules(tmp_path, capsys):
    assert report().main(["--root", str(results(tmp_path)), "--names", "pkg.mod"]) == 0
    assert capsys.readouterr().out.split() == ["pkg.mod.x_f__mutmut_2", "pkg.mod.x_f__mutmut_3", "pkg.mod.x_f__mutmut_4"]


def test_the_table_counts_caught_over_checked(tmp_path, capsys):
    assert report().main(["--root", str(results(tmp_path)), "--markdown", "pkg.mod"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| pkg.mod")]
    assert row == ["| pkg.mod | 2 / 4 | 50.0 | 1 | 1 | 1 | 0 |"]
