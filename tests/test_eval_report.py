"""The checkpoint report: metrics files and training logs in, Markdown/JSON table and readable PNGs out."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from perception_r1.cli import main
from perception_r1.eval.report import build_report, load_metrics, read_training_log

VERL_CONSOLE = """\
(TaskRunner pid=4242) Training Progress:  10%|#         | 1/10
(TaskRunner pid=4242) step:1 - actor/entropy:np.float64(1.25) - critic/score/mean:np.float64(0.5) - reward/visual:0.25 - training/global_step:1
(TaskRunner pid=4242) step:2 - actor/entropy:np.float64(1.1) - critic/score/mean:np.float64(0.625) - reward/visual:0.5 - note:nan
step:3 - critic/score/mean:0.75 - reward/visual:np.float32(0.75)
unrelated line with step:x
"""


def _write_json(path, obj):
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def run_files(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    # an `eval score` summary (one benchmark per file) and a {benchmark: metrics} mapping
    _write_json(
        base / "mathvista.json",
        {"benchmark": "mathvista", "accuracy": 0.5, "n": 4, "judge_used": False, "checkpoint": "base"},
    )
    _write_json(
        base / "perception.json",
        {"refcoco_val": {"acc@0.5": 0.8, "acc@0.75": 0.6, "acc@0.95": 0.1, "acc_mean": 0.5, "n": 10}},
    )
    rl = tmp_path / "rl"
    rl.mkdir()
    _write_json(rl / "mathvista.json", {"benchmark": "mathvista", "accuracy": 0.75, "n": 4})
    _write_json(
        rl / "perception.json",
        {
            "refcoco_val": {"acc@0.5": 0.9, "acc@0.75": 0.7, "acc@0.95": 0.2, "acc_mean": 0.6, "n": 10},
            "pageocr": {"edit_distance": 0.1, "f1": 0.9, "meteor_wordnet": True},
        },
    )
    return base, rl


def test_load_metrics_shapes_and_errors(run_files, tmp_path):
    base, rl = run_files
    metrics = load_metrics([rl])
    assert metrics["mathvista"] == {"accuracy": 0.75, "n": 4.0}
    assert metrics["pageocr"] == {"edit_distance": 0.1, "f1": 0.9}  # booleans are not metrics
    with pytest.raises(ValueError, match="already read"):
        load_metrics([rl, rl / "mathvista.json"])
    with pytest.raises(ValueError, match="no such file"):
        load_metrics([tmp_path / "missing.json"])
    with pytest.raises(ValueError, match="no benchmark metrics"):
        load_metrics([_write_json(tmp_path / "flat.json", {"accuracy": 0.3})])


def test_read_verl_console_and_file_logger(tmp_path):
    console = tmp_path / "train.log"
    console.write_text(VERL_CONSOLE)
    rows = read_training_log(console)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["critic/score/mean"] == 0.5 and rows[0]["actor/entropy"] == 1.25
    assert rows[2]["reward/visual"] == 0.75
    assert "note" not in rows[1]  # nan is dropped

    file_logger = tmp_path / "exp.jsonl"  # verl's FileLogger: {"step": N, "data": {...}}
    file_logger.write_text(
        json.dumps({"step": 1, "data": {"critic/score/mean": 0.2, "val": {"acc": 0.1}}})
        + "\n"
        + json.dumps({"step": 2, "critic/score/mean": 0.4})
        + "\n"
    )
    rows = read_training_log(file_logger)
    assert rows == [{"step": 1, "critic/score/mean": 0.2, "val/acc": 0.1}, {"step": 2, "critic/score/mean": 0.4}]
    (tmp_path / "bad.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'step'"):
        read_training_log(tmp_path / "bad.jsonl")
    (tmp_path / "empty.log").write_text("nothing here\n")
    with pytest.raises(ValueError, match="no training steps"):
        read_training_log(tmp_path / "empty.log")


def test_read_swanlab_local_run(tmp_path, monkeypatch):
    import swanlab  # a required dependency (the verl extra): a broken install fails here, never skips

    monkeypatch.chdir(tmp_path)
    logdir = tmp_path / "swanlog"
    swanlab.init(project="p", experiment_name="e", mode="local", logdir=str(logdir))
    for step in range(1, 4):
        swanlab.log({"critic/score/mean": 0.25 * step, "reward/visual": float(step)}, step=step)
    swanlab.finish()
    rows = read_training_log(logdir)
    assert rows == [{"step": s, "critic/score/mean": 0.25 * s, "reward/visual": float(s)} for s in (1, 2, 3)]


def _png_ok(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 200
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 10  # not a blank canvas


def test_report_cli_writes_table_json_and_plots(run_files, tmp_path, capsys):
    base, rl = run_files
    console = tmp_path / "rl.log"
    console.write_text(VERL_CONSOLE)
    out = tmp_path / "report"
    argv = ["eval", "report", "--run", f"base={base}", "--run", f"rl={rl}", "--train-log", f"rl={console}"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert str(out / "report.md") in printed

    md = (out / "report.md").read_text()
    assert "Baseline: **base**" in md
    assert "| benchmark | metric | base | rl | Δ rl |" in md
    assert "| mathvista | accuracy | 0.5000 | 0.7500 | +0.2500 |" in md
    assert "| refcoco_val | acc@0.5 | 0.8000 | 0.9000 | +0.1000 |" in md
    assert "| pageocr | edit_distance ↓ | — | 0.1000 | — |" in md
    assert "| mathvista | n |" not in md  # counts are not headline metrics
    assert "![training](training.png)" in md and "`reward/visual`" in md

    report = json.loads((out / "report.json").read_text())
    assert report["baseline"] == "base" and report["runs"] == ["base", "rl"]
    row = next(r for r in report["table"] if r["benchmark"] == "refcoco_val" and r["metric"] == "acc_mean")
    assert row["values"] == {"base": 0.5, "rl": 0.6} and row["delta"]["rl"] == pytest.approx(0.1)
    assert report["metrics"]["rl"]["pageocr"]["f1"] == 0.9
    assert [r["step"] for r in report["training"]["rl"]] == [1, 2, 3]
    assert sorted(report["plots"]) == [
        "bench_mathvista.png",
        "bench_pageocr.png",
        "bench_refcoco_val.png",
        "training.png",
    ]
    for name in report["plots"]:
        _png_ok(out / name)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_report_baseline_metric_filter_and_errors(run_files, tmp_path, capsys):
    base, rl = run_files
    report = build_report(
        [("base", load_metrics([base])), ("rl", load_metrics([rl]))],
        tmp_path / "r",
        baseline="rl",
        metrics=["acc@0.5"],
    )
    md = report.markdown.read_text()
    assert "| base | rl |" not in md and "| rl | base | Δ base |" in md
    assert "| refcoco_val | acc@0.5 | 0.9000 | 0.8000 | -0.1000 |" in md and "acc@0.75" not in md
    assert [p.name for p in report.plots] == ["bench_refcoco_val.png"]
    with pytest.raises(ValueError, match="baseline"):
        build_report([("base", load_metrics([base]))], tmp_path / "x", baseline="nope")
    assert main(["eval", "report", "--run", str(base), "--out", str(tmp_path / "y")]) == 2
    assert "expected LABEL=PATH" in capsys.readouterr().err
    assert main(["eval", "report", "--run", f"a={base}", "--train-log", f"a={base}", "--out", str(tmp_path / "z")]) == 2
    assert "not a SwanLab run" in capsys.readouterr().err
