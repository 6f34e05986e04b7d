"""Honest denominators: an item without a prediction is a miss in every scorer, every summary line shows coverage,
and `eval report` refuses to compare runs of different coverage or item sets unless told (`--allow-partial`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perception_r1.cli import main as cli_main
from perception_r1.eval.benchmarks import load_benchmark


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_predictions(path: Path, responses: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": k, "response": v}) + "\n" for k, v in responses.items()))
    return path


@pytest.fixture(scope="module")
def wemath(shared_data: Path) -> list:
    return load_benchmark("wemath", shared_data / "wemath")


def score_wemath(shared_data: Path, preds: Path, summary: Path, capsys, *extra: str) -> tuple[int, str, str]:
    return run_cli(
        ["eval", "score", "--benchmark", "wemath", "--data", str(shared_data / "wemath"), "--predictions", str(preds),
         "--summary", str(summary), "--no-judge", *extra],
        capsys,
    )  # fmt: skip


def test_reasoning_missing_items_are_misses_and_coverage_is_shown(shared_data, wemath, tmp_path, capsys):
    answered = wemath[:10]  # all ten right, thirty never answered
    preds = write_predictions(tmp_path / "partial.jsonl", {i.id: f"\\boxed{{{i.answer}}}" for i in answered})
    code, out, err = score_wemath(shared_data, preds, tmp_path / "partial.summary.json", capsys)
    assert code == 0
    summary = json.loads((tmp_path / "partial.summary.json").read_text())
    assert summary["n"] == 40 and summary["answered"] == 10 and summary["missing"] == 30
    assert summary["correct"] == 10 and summary["accuracy"] == pytest.approx(10 / 40)  # not 10/10
    assert summary["coverage"] == pytest.approx(0.25)
    assert "accuracy 0.2500 (10/40)" in out and "coverage 10/40" in out
    assert "30 of 40 items have no prediction" in err  # a warning, not silence
    # breakdowns and We-Math groups count the missing items as wrong too
    for values in summary["breakdowns"]["key"].values():
        assert values["n"] >= values["correct"]
    assert sum(v["n"] for v in summary["breakdowns"]["key"].values()) == 40
    assert summary["wemath"]["groups"] == 12 and summary["wemath"]["incomplete_groups"] == 0


def test_perception_and_reasoning_scorers_agree_on_coverage(shared_data, tmp_path, capsys):
    parquet = tmp_path / "ocr.parquet"
    assert cli_main(["data", "pageocr", "--input", str(shared_data / "ocr" / "pages.jsonl"),
                     "--output", str(parquet), "--split", "val"]) == 0  # fmt: skip
    pages = load_benchmark("pageocr", parquet)
    preds = write_predictions(tmp_path / "ocr.jsonl", {p.id: p.meta["ground_truth"] for p in pages[:2]})
    code, out, err = run_cli(
        ["eval", "score", "--benchmark", "pageocr", "--data", str(parquet), "--predictions", str(preds),
         "--summary", str(tmp_path / "ocr.summary.json")],
        capsys,
    )  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "ocr.summary.json").read_text())
    assert (summary["n"], summary["answered"], summary["missing"]) == (5, 2, 3)
    assert summary["coverage"] == pytest.approx(0.4)
    assert summary["f1"] == pytest.approx(2 / 5)  # two perfect pages, three misses
    assert "coverage 2/5" in out and "3 of 5 items have no prediction" in err


def _summaries(shared_data, wemath, tmp_path, capsys) -> tuple[Path, Path, Path]:
    full = write_predictions(tmp_path / "full.jsonl", {i.id: "\\boxed{A}" for i in wemath})
    part = write_predictions(tmp_path / "part.jsonl", {i.id: f"\\boxed{{{i.answer}}}" for i in wemath[:28]})
    first20 = write_predictions(tmp_path / "first20.jsonl", {i.id: "\\boxed{A}" for i in wemath[:20]})
    out = []
    for name, preds, extra in (("full", full, ()), ("part", part, ()), ("limited", first20, ("--limit", "20"))):
        path = tmp_path / f"{name}.summary.json"
        code, _, _ = score_wemath(shared_data, preds, path, capsys, *extra)
        assert code == 0
        out.append(path)
    return out[0], out[1], out[2]


def test_report_refuses_runs_of_different_coverage_unless_allowed(shared_data, wemath, tmp_path, capsys):
    full, part, limited = _summaries(shared_data, wemath, tmp_path, capsys)
    code, _, err = run_cli(["eval", "report", "--run", f"base={full}", "--run", f"rl={part}",
                            "--out", str(tmp_path / "r1")], capsys)  # fmt: skip
    assert code == 2
    assert "wemath" in err and "28/40" in err and "--allow-partial" in err
    assert not (tmp_path / "r1" / "report.md").exists()

    code, _, err = run_cli(["eval", "report", "--run", f"base={full}", "--run", f"small={limited}",
                            "--out", str(tmp_path / "r2")], capsys)  # fmt: skip
    assert code == 2 and "item sets differ" in err

    code, out, err = run_cli(["eval", "report", "--run", f"base={full}", "--run", f"rl={part}",
                              "--out", str(tmp_path / "r3"), "--allow-partial"], capsys)  # fmt: skip
    assert code == 0
    md = (tmp_path / "r3" / "report.md").read_text()
    assert "coverage" in md and "28/40" in md and "40/40" in md
    assert "partial" in md.lower()
    report = json.loads((tmp_path / "r3" / "report.json").read_text())
    assert report["coverage"]["rl"]["wemath"] == {
        "answered": 28,
        "n": 40,
        "items": report["coverage"]["rl"]["wemath"]["items"],
    }
    assert report["partial"] is True


def test_report_of_complete_runs_shows_coverage_and_needs_no_flag(shared_data, wemath, tmp_path, capsys):
    full = write_predictions(tmp_path / "a.jsonl", {i.id: "\\boxed{A}" for i in wemath})
    other = write_predictions(tmp_path / "b.jsonl", {i.id: f"\\boxed{{{i.answer}}}" for i in wemath})
    paths = []
    for name, preds in (("a", full), ("b", other)):
        path = tmp_path / f"{name}.summary.json"
        assert score_wemath(shared_data, preds, path, capsys)[0] == 0
        paths.append(path)
    code, out, _ = run_cli(["eval", "report", "--run", f"a={paths[0]}", "--run", f"b={paths[1]}",
                            "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "40/40" in md and "partial" not in md.lower()


def test_report_reads_coverage_of_older_summaries(tmp_path):
    """Summaries written before `answered` existed counted only answered items in `n`, plus `missing`."""
    from perception_r1.eval.report import Coverage, load_run

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"benchmark": "mathvista", "accuracy": 0.6429, "n": 70, "correct": 45, "missing": 234}))
    _, coverage = load_run([old])
    assert coverage["mathvista"] == Coverage(answered=70, n=304, items=None) and coverage["mathvista"].partial
