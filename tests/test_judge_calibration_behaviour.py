"""Promises of the judge calibration module that mutation testing found unguarded: reading a labelled file (the
shipped default, line numbers in errors, blank lines), row validation messages, the per-row detail line, the
threshold warnings word for word, and that ``run_judge`` asks exactly as the reward does."""

from __future__ import annotations

import asyncio
import json

import pytest

from perception_r1.judge.calibration import (
    KINDS,
    LabelledRow,
    PairCounts,
    RowResult,
    Thresholds,
    load_rows,
    row_output,
    run_judge,
    shipped_labels_path,
    summarize,
    validate_row,
)
from perception_r1.judge.client import JudgeClient, JudgeSettings
from perception_r1.testing import OpenAITestServer

ROW = {"response": "AB = 3", "annotations": ["AB = 3", "CD = 4"], "labels": [1, 0], "kind": "partial", "id": 7}


def write(tmp_path, lines: list[str]):
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_load_rows_reads_the_shipped_set_by_default():
    rows = load_rows()
    assert rows == load_rows(shipped_labels_path()) and len(rows) >= 60
    assert {r.kind for r in rows} == set(KINDS) and all(isinstance(r, LabelledRow) for r in rows)


def test_load_rows_skips_blank_lines_and_keeps_every_field(tmp_path):
    paper = {**ROW, "id": "p", "labels_paper": [1, 1], "response": "ünïcode AB = 3"}
    path = write(tmp_path, [json.dumps(ROW), "", "   ", json.dumps(paper, ensure_ascii=False)])
    rows = load_rows(path)
    assert rows == [
        LabelledRow("AB = 3", ("AB = 3", "CD = 4"), (1, 0), "partial", 7),
        LabelledRow("ünïcode AB = 3", ("AB = 3", "CD = 4"), (1, 0), "partial", "p", (1, 1)),
    ]
    assert rows[1].labels_for("paper") == (1, 1) and rows[1].labels_for("strict") == (1, 0)
    assert rows[0].labels_for("paper") == (1, 0)


def test_load_rows_errors_name_the_file_and_line(tmp_path):
    path = write(tmp_path, [json.dumps(ROW), "", "{not json"])
    with pytest.raises(ValueError, match=rf"^{path}:3: not valid JSON \("):
        load_rows(path)
    path = write(tmp_path, [json.dumps(ROW), json.dumps({**ROW, "labels": [1]})])
    with pytest.raises(ValueError, match=rf"^{path}:2: field 'labels' must be a list of 2 values"):
        load_rows(path)
    path = write(tmp_path, ["", " "])
    with pytest.raises(ValueError, match=rf"^{path}: no labelled rows$"):
        load_rows(path)
    with pytest.raises(ValueError, match=r"^cannot read the labelled file /nonexistent/x.jsonl: No such file"):
        load_rows("/nonexistent/x.jsonl")


@pytest.mark.parametrize(
    "obj, message",
    [
        (["x"], "here: expected a JSON object, got list"),
        ({**ROW, "response": 3}, "here: field 'response' must be a string, got int"),
        ({**ROW, "annotations": []}, "here: field 'annotations' must be a non-empty list of strings"),
        ({**ROW, "annotations": ["a", 5]}, "here: field 'annotations[1]' must be a non-empty string, got 5"),
        ({**ROW, "annotations": ["a", "  "]}, "here: field 'annotations[1]' must be a non-empty string, got '  '"),
        ({**ROW, "labels": [1, True]}, "here: field 'labels[1]' must be 0 or 1, got True"),
        ({**ROW, "labels_paper": [1]}, "here: field 'labels_paper' must be a list of 2 values"),
        ({**ROW, "kind": "lie"}, "here: field 'kind' must be one of state, partial, omit, misstate, parrot, forged"),
    ],
)
def test_validate_row_names_the_field(obj, message):
    with pytest.raises(ValueError) as info:
        validate_row(obj, "here")
    assert str(info.value).startswith(message)


def test_row_output_is_the_details_line():
    row = LabelledRow("r", ("a", "b"), (1, 0), "partial", 7, (1, 1))
    assert row_output(RowResult(row, [1, 1], False, "paper")) == {
        "id": 7,
        "kind": "partial",
        "prompt": "paper",
        "labels": [1, 1],
        "verdicts": [1, 1],
        "judge_failed": 0,
        "visual_true": 1.0,
        "visual_judged": 1.0,
    }
    assert row_output(RowResult(row, [1, 1], True, "strict"))["visual_judged"] == 0.0


def test_pair_metrics_include_the_false_present_rate_and_kappa():
    counts = PairCounts(tp=3, fp=1, fn=1, tn=5)
    metrics = counts.metrics()
    assert metrics["false_present_rate"] == pytest.approx(1 / 6) and metrics["n"] == 10
    assert metrics["kappa"] == pytest.approx((0.8 - 0.52) / 0.48)
    assert PairCounts(tp=2).metrics()["kappa"] is None  # chance agreement 1: kappa undefined


def test_summary_warnings_word_for_word_and_failures_as_all_absent():
    state = LabelledRow("r", ("a", "b"), (1, 1), "state", 1)
    forged = LabelledRow("f", ("a", "b"), (0, 0), "forged", 2)
    results = [RowResult(state, [1, 0], False), RowResult(forged, [1, 1], True), RowResult(state, [0, 1], False)]
    report = summarize(results)
    m = report.metrics
    assert m["judge_failed"] == 1 and m["hack_rate"] == 0.0 and m["hack_pairs"] == 2  # a failed call hacks nothing
    assert m["visual_max_error"] == 0.5 and report.by_kind["forged"]["visual_max_error"] == 0.0
    assert report.warnings == [
        "agreement 0.667 is below 0.900",
        "recall 0.500 is below 0.850",
        "visual_mae 0.333 is above 0.150",
        "1 judge call(s) failed (counted as all-absent)",
    ]
    assert report.as_dict()["passed"] is False


def test_values_exactly_at_the_thresholds_pass():
    row = LabelledRow("r", ("a", "b", "c", "d"), (1, 1, 0, 0), "partial", 1)
    results = [RowResult(row, [1, 1, 0, 1], False)]
    limits = Thresholds(min_agreement=0.75, min_precision=2 / 3, min_recall=1.0, max_visual_mae=0.25)
    assert summarize(results, limits).warnings == []
    assert summarize([RowResult(row, [1, 1, 0, 0], False)]).warnings == []  # default thresholds, a perfect judge


@pytest.mark.parametrize("constrained", [False, True])
def test_run_judge_asks_like_the_reward_and_reports_progress(constrained):
    rows = load_rows()[:4]
    done = []
    with OpenAITestServer(models=["judge"]) as server:
        client = JudgeClient(JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=0))

        async def go():
            try:
                return await run_judge(client, rows, on_done=lambda: done.append(1), constrained=constrained)
            finally:
                await client.aclose()

        results = asyncio.run(go())
        bodies = [record.body for record in server.log]
    assert [r.row for r in results] == rows and all(r.prompt == "paper" and not r.failed for r in results)
    assert len(done) == 4 and all(("structured_outputs" in b) is constrained for b in bodies)


def test_a_yes_man_judge_is_warned_about_precision():
    row = LabelledRow("r", ("a", "b"), (1, 0), "partial", 1)
    warnings = summarize([RowResult(row, [1, 1], False)]).warnings
    assert "precision 0.500 is below 0.900" in warnings


def test_a_summary_of_nothing_has_no_numbers_and_does_not_crash():
    report = summarize([])
    assert report.metrics["visual_max_error"] is None and report.metrics["agreement"] is None
    assert report.warnings == [] and report.by_kind == {}


def test_run_judge_sends_free_text_requests_by_default():
    with OpenAITestServer(models=["judge"]) as server:
        client = JudgeClient(JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=0))

        async def go():
            try:
                return await run_judge(client, load_rows()[:1])
            finally:
                await client.aclose()

        [result] = asyncio.run(go())
        [record] = server.log
    assert "structured_outputs" not in record.body and result.prompt == "paper"


def test_pairs_put_each_verdict_beside_its_label_and_a_failed_call_judges_nothing_present():
    row = LabelledRow("p", ("a", "b", "c"), (1, 0, 1), "partial", 3)
    assert RowResult(row, [1, 1, 0], False).pairs() == [(1, 1), (1, 0), (0, 1)]
    assert RowResult(row, [1, 1, 1], True).pairs() == [(0, 1), (0, 0), (0, 1)]  # what training scores a failure
    assert RowResult(row, [], True).pairs() == [(0, 1), (0, 0), (0, 1)]  # a failure need not carry verdicts
