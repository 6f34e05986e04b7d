"""End to end on CPU: a local OpenAI-compatible server stands in for the served checkpoint (scripted answers:
some right, some wrong, some unreadable), a judge server reads what the rules cannot; `eval run` is killed
halfway as a real subprocess and resumed, then `eval score` and the report."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from perception_r1.cli import main as cli_main
from perception_r1.eval.benchmarks import LETTERS, BenchmarkItem, load_benchmark
from perception_r1.eval.inference import build_messages
from perception_r1.testing import OpenAITestServer

SECRET = "sk-eval-test-secret"
_OPTION = re.compile(r"option ([A-E]) seems best")


def plan(index: int) -> str:
    """What the scripted checkpoint does for the index-th item."""
    return ("wrong", "boxed", "judge_readable", "phrase", "unreadable")[index % 5]


def scripted_response(item: BenchmarkItem, index: int) -> str:
    kind = plan(index)
    gold = item.answer
    if kind == "wrong":
        bad = next(letter for letter in item.letters if letter != gold)
        return f"<think>\nguess\n</think>\n<answer>\n\\boxed{{{bad}}}\n</answer>"
    if kind == "boxed":
        return f"<think>\nlooks right\n</think>\n<answer>\n\\boxed{{{gold}}}\n</answer>"
    if kind == "judge_readable":
        return f"After checking the figure, option {gold} seems best overall for this one, I would say."
    if kind == "phrase":
        return f"Working through it, the answer is {item.choices[LETTERS.index(gold)]}."
    return "I am not able to work this out from the picture given here, sorry."


def request_key(request: dict) -> str:
    content = request["messages"][-1]["content"]
    text = next(p["text"] for p in content if p["type"] == "text")
    images = [p["image_url"]["url"][-80:] for p in content if p["type"] == "image_url"]
    return text + "|" + "|".join(images)


def judge_responder(request: dict) -> str:
    text = request["messages"][-1]["content"]
    match = _OPTION.search(text)
    return match.group(1) if match else "NONE"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main(args)
    return code, capsys.readouterr().out


def test_inference_kill_resume_score_report(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wemath = load_benchmark("wemath", shared_data / "wemath")
    by_key = {request_key({"messages": build_messages(item)}): (i, item) for i, item in enumerate(wemath)}
    assert len(by_key) == len(wemath)

    gate = threading.Event()
    log: list[tuple[str, str]] = []  # (run, item id) for every chat request

    def checkpoint(run: str):
        """The responder of one run's server. The first run's server freezes at its 13th request (its loop
        blocks, so nothing else is answered) until the test has killed the client; a request that reaches it
        late is still logged as the first run's: each run has its own server, no timing decides the label."""

        def respond(request: dict) -> str:
            index, item = by_key[request_key(request)]
            log.append((run, item.id))
            if run == "run1" and len(log) > 12:
                gate.wait(600)
            return scripted_response(item, index)

        return respond

    preds = tmp_path / "ckpt" / "wemath.jsonl"
    with (
        OpenAITestServer(models=["ckpt"], responder=checkpoint("run1"), api_key=SECRET) as server,
        OpenAITestServer(models=["ckpt"], responder=checkpoint("run2"), api_key=SECRET) as second,
        OpenAITestServer(models=["judge"], responder=judge_responder) as judge,
    ):
        def run_args(url: str) -> list[str]:
            return [
                "eval", "run", "--benchmark", "wemath", "--data", str(shared_data / "wemath"),
                "--output", str(preds), "--base-url", url, "--model", "ckpt", "--max-concurrency", "2",
            ]  # fmt: skip

        env = {**os.environ, "EVAL_API_KEY": SECRET, "PERCEPTION_R1_NO_PROGRESS": "0"}
        process = subprocess.Popen(
            [sys.executable, "-m", "perception_r1", *run_args(server.base_url)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 300  # a bound for a broken run, not a speed limit
        while time.monotonic() < deadline:
            written = preds.read_text().count("\n") if preds.exists() else 0
            if written >= 11 and len(log) > 12:  # the server is frozen and the client has written its answers
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=30)
        gate.set()
        assert process.returncode == -signal.SIGKILL
        assert "it/s" in stderr or "item/s" in stderr or "s/item" in stderr  # the progress bar showed a rate
        done_first = {json.loads(line)["id"] for line in preds.read_text().splitlines() if line.endswith("}")}
        assert 11 <= len(done_first) < len(wemath)

        os.environ["EVAL_API_KEY"] = SECRET
        try:
            code, _ = run_cli(run_args(second.base_url), capsys)
        finally:
            del os.environ["EVAL_API_KEY"]
        assert code == 0
        asked_second = [item_id for name, item_id in log if name == "run2"]
        assert not set(asked_second) & done_first  # nothing answered before the kill is requested again
        assert len(asked_second) == len(set(asked_second)) == len(wemath) - len(done_first)
        rows = [json.loads(line) for line in preds.read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == sorted(i.id for i in wemath)  # complete, each id once
        assert SECRET not in preds.read_text() and SECRET not in stderr

        # a baseline checkpoint that always answers A, and a second benchmark for the report
        baseline = tmp_path / "base" / "wemath.jsonl"
        baseline.parent.mkdir()
        baseline.write_text("".join(json.dumps({"id": i.id, "response": "\\boxed{A}"}) + "\n" for i in wemath))

        summary_path = tmp_path / "ckpt" / "wemath.summary.json"
        code, out = run_cli(
            [
                "eval", "score", "--benchmark", "wemath", "--data", str(shared_data / "wemath"),
                "--predictions", str(preds), "--output", str(tmp_path / "ckpt" / "wemath.scored.jsonl"),
                "--summary", str(summary_path), "--checkpoint", "ckpt",
                "--judge-base-url", judge.base_url, "--judge-model", "judge", "--json",
            ],
            capsys,
        )  # fmt: skip
        assert code == 0
        judged_requests = len(judge.requests)

    summary = json.loads(out)
    assert summary == json.loads(summary_path.read_text())
    kinds = [plan(i) for i in range(len(wemath))]
    expected_correct = sum(k in ("boxed", "judge_readable", "phrase") for k in kinds)
    assert summary["n"] == 40 and summary["missing"] == 0
    assert summary["correct"] == expected_correct and summary["accuracy"] == pytest.approx(expected_correct / 40)
    assert summary["extraction"]["rule"] == sum(k in ("wrong", "boxed", "phrase") for k in kinds)
    assert summary["extraction"]["judge"] == kinds.count("judge_readable")
    assert summary["extraction"]["none"] == kinds.count("unreadable")
    assert judged_requests == kinds.count("judge_readable") + kinds.count("unreadable")  # judge only as fallback

    # We-Math four-dimensional metrics against a direct count over the groups
    right = {item.id: kinds[i] in ("boxed", "judge_readable", "phrase") for i, item in enumerate(wemath)}
    groups: dict[str, dict[str, bool]] = {}
    for item in wemath:
        groups.setdefault(item.meta["group"], {})[item.meta["step"]] = right[item.id]
    ik = ig = cm = rm = 0
    for results in groups.values():
        subs = [v for k, v in results.items() if k != "multi"]
        if results["multi"]:
            cm += all(subs)
            rm += not all(subs)
        else:
            ig += all(subs)
            ik += not all(subs)
    counts = summary["wemath"]["counts"]
    assert (counts["IK"], counts["IG"], counts["CM_strict"], counts["RM_strict"]) == (ik, ig, cm, rm)
    assert summary["wemath"]["score_strict"] == pytest.approx((12 - 0.5 * ig - rm - ik) / 12)

    scored = [json.loads(line) for line in (tmp_path / "ckpt" / "wemath.scored.jsonl").read_text().splitlines()]
    assert sum(r["correct"] for r in scored) == expected_correct

    base_scored = tmp_path / "base" / "wemath.scored.jsonl"
    code, base_out = run_cli(
        ["eval", "score", "--benchmark", "wemath", "--data", str(shared_data / "wemath"),
         "--predictions", str(baseline), "--summary", str(tmp_path / "base" / "wemath.summary.json"),
         "--output", str(base_scored), "--checkpoint", "baseline", "--no-judge", "--json"],
        capsys,
    )  # fmt: skip
    base_summary = json.loads(base_out)
    assert base_summary["correct"] == sum(i.answer == "A" for i in wemath)
    assert base_summary["judge_used"] is False

    # McNemar on the per-item rows `eval score` wrote (the statistics helper's command)
    code, mc_out = run_cli(
        ["eval", "mcnemar", "--before", str(base_scored), "--after", str(tmp_path / "ckpt" / "wemath.scored.jsonl"),
         "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0
    base_right = {r["id"]: r["correct"] for r in map(json.loads, base_scored.read_text().splitlines())}
    mc = json.loads(mc_out)
    assert mc["b"] == sum(base_right[i] and not right[i] for i in right)
    assert mc["c"] == sum(right[i] and not base_right[i] for i in right)

    # the comparison report with plots (the report helper's command), with a small training log
    train_log = tmp_path / "train.jsonl"
    train_log.write_text(
        "".join(
            json.dumps({"step": s, "reward/accuracy": 0.2 + 0.05 * s, "reward/format": 0.5 + 0.04 * s}) + "\n"
            for s in range(1, 11)
        )
    )
    out_dir = tmp_path / "report"
    code, _ = run_cli(
        ["eval", "report", "--run", f"baseline={tmp_path / 'base' / 'wemath.summary.json'}",
         "--run", f"ckpt={summary_path}", "--baseline", "baseline", "--train-log", f"ckpt={train_log}",
         "--out", str(out_dir)],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert (out_dir / "bench_wemath.png").stat().st_size > 0 and (out_dir / "training.png").stat().st_size > 0
    report = json.loads((out_dir / "report.json").read_text())
    assert report["metrics"]["ckpt"]["wemath"]["accuracy"] == pytest.approx(summary["accuracy"])
    assert report["metrics"]["baseline"]["wemath"]["accuracy"] == pytest.approx(base_summary["accuracy"])
    assert report["metrics"]["ckpt"]["wemath"]["wemath/score_strict"] == pytest.approx(
        summary["wemath"]["score_strict"]
    )
    assert "ckpt" in (out_dir / "report.md").read_text()


def _by_image(items: list[BenchmarkItem]) -> dict[str, BenchmarkItem]:
    """Items keyed by the data URL of their image (how the scripted checkpoint recognises a request)."""
    return {build_messages(item)[0]["content"][0]["image_url"]["url"]: item for item in items}


def _image_url(request: dict) -> str:
    return next(p["image_url"]["url"] for p in request["messages"][-1]["content"] if p["type"] == "image_url")


def test_perception_benchmarks_through_the_data_builders(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PageOCR and COCO detection: the validation parquet from `data …`, inference, then perception metrics."""
    ocr_parquet, coco_parquet = tmp_path / "ocr.parquet", tmp_path / "coco.parquet"
    assert cli_main(["data", "pageocr", "--input", str(shared_data / "ocr" / "pages.jsonl"),
                     "--output", str(ocr_parquet), "--split", "val"]) == 0  # fmt: skip
    # the scripted checkpoint answers in original-image pixels: the data records that frame (extra_info.coord_frame)
    assert cli_main(["data", "coco-detection", "--annotations", str(shared_data / "coco" / "instances.json"),
                     "--output", str(coco_parquet), "--split", "val", "--coord-frame", "absolute"]) == 0  # fmt: skip
    pages = load_benchmark("pageocr", ocr_parquet)
    images = load_benchmark("coco_detection", coco_parquet)
    page_of, image_of = _by_image(pages), _by_image(images)

    def checkpoint(request: dict) -> str:
        url = _image_url(request)
        if url in page_of:
            item = page_of[url]
            return item.meta["ground_truth"] if int(item.id) % 2 == 0 else "unreadable scan"
        item = image_of[url]
        objects = item.meta["ground_truth"] if int(item.id) != 0 else []  # misses every object of one image
        return json.dumps([{"bbox_2d": o["bbox"], "label": o["label"]} for o in objects])

    with OpenAITestServer(models=["ckpt"], responder=checkpoint) as server:
        for name, parquet in (("pageocr", ocr_parquet), ("coco_detection", coco_parquet)):
            code, _ = run_cli(
                ["eval", "run", "--benchmark", name, "--data", str(parquet),
                 "--output", str(tmp_path / f"{name}.jsonl"), "--base-url", server.base_url, "--model", "ckpt"],
                capsys,
            )  # fmt: skip
            assert code == 0
        # the training prompt is sent verbatim: image first, then the builder's text
        first = server.requests[0]["messages"][0]["content"]
        assert first[0]["type"] == "image_url" and first[1] == {"type": "text", "text": "OCR this image."}

    code, out = run_cli(
        ["eval", "score", "--benchmark", "pageocr", "--data", str(ocr_parquet),
         "--predictions", str(tmp_path / "pageocr.jsonl"), "--output", str(tmp_path / "pageocr.scored.jsonl"),
         "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0
    ocr = json.loads(out)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "pageocr.scored.jsonl").read_text().splitlines())}
    assert ocr["n"] == 5 and ocr["missing"] == 0
    for item in pages:
        expect_perfect = int(item.id) % 2 == 0
        assert (rows[item.id]["f1"] == pytest.approx(1.0)) is expect_perfect
        assert (rows[item.id]["edit_distance"] == pytest.approx(0.0)) is expect_perfect
    assert ocr["f1"] == pytest.approx(sum(r["f1"] for r in rows.values()) / 5)

    coco_args = [
        "eval", "score", "--benchmark", "coco_detection", "--data", str(coco_parquet),
        "--predictions", str(tmp_path / "coco_detection.jsonl"), "--set", "coord_frame=absolute", "--json",
    ]  # fmt: skip
    code, _ = run_cli(coco_args, capsys)
    assert code == 2  # the instances JSON is required for COCO AP
    annotations = shared_data / "coco" / "instances.json"
    code, out = run_cli([*coco_args, "--annotations", str(annotations)], capsys)
    assert code == 0
    coco = json.loads(out)
    assert coco["n"] == 9
    assert coco["AP"] == pytest.approx(
        _pycocotools_reference(annotations, skip_image=images[0].meta["extra_info"]["image_id"])
    )
    assert coco["AP"] < 1.0


def _pycocotools_reference(annotations: Path, skip_image: int) -> float:
    """AP straight from pycocotools for the scripted answers: every ground-truth box but one image's, score 1."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        results = [
            {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt.dataset["annotations"]
            if a["image_id"] != skip_image and not a.get("iscrowd")
        ]
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])
