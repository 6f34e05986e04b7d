"""``perception-r1 judge calibrate`` against scripted judges on a real local server; expected numbers are computed
here independently from the labels and from what each scripted judge is known to answer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from perception_r1.cli import main
from perception_r1.judge.calibration import KINDS, shipped_labels_path
from perception_r1.testing import OpenAITestServer
from perception_r1.testing.openai_server import substring_judge

FENCE = re.compile(r"^(=====RESPONSE-[0-9a-f]+=====)$", re.MULTILINE)


def _labels() -> list[dict]:
    return [json.loads(line) for line in Path(shipped_labels_path()).read_text().splitlines() if line.strip()]


def _key(text: str) -> str:
    # alphanumerics only: the judge sees the response with <infoK> defanged to ‹infoK›
    return "".join(ch for ch in text if ch.isalnum())


def _fenced_response(request: dict) -> str:
    text = request["messages"][-1]["content"]
    boundary = FENCE.search(text).group(1)
    return text.split(boundary + "\n", 1)[1].rsplit("\n" + boundary, 1)[0]


def labels_for(row: dict, prompt: str = "paper") -> list[int]:
    """The labels that answer the prompt's question (``labels_paper`` where the paper's question differs)."""
    return row.get("labels_paper") or row["labels"] if prompt == "paper" else row["labels"]


def good_judge(rows: list[dict], prompt: str = "paper"):
    """Answers exactly the human labels for the prompt's question."""
    by_response = {_key(r["response"]): labels_for(r, prompt) for r in rows}

    def respond(request: dict) -> str:
        labels = by_response[_key(_fenced_response(request))]
        return "\n".join(f"<info{k}>{v}</info{k}>" for k, v in enumerate(labels, start=1))

    return respond


def substring_verdicts(row: dict) -> list[int]:
    """What the test server's substring judge answers: stated iff the annotation text appears verbatim."""
    response = " ".join(row["response"].lower().split())
    return [int(" ".join(a.lower().split()) in response) for a in row["annotations"]]


def expected_metrics(rows: list[dict], verdicts: list[list[int]], prompt: str = "paper") -> dict:
    pairs = [
        (v, lab)
        for row, vs in zip(rows, verdicts, strict=True)
        for v, lab in zip(vs, labels_for(row, prompt), strict=True)
    ]
    tp = sum(1 for v, lab in pairs if v == 1 and lab == 1)
    tn = sum(1 for v, lab in pairs if v == 0 and lab == 0)
    fp = sum(1 for v, lab in pairs if v == 1 and lab == 0)
    fn = sum(1 for v, lab in pairs if v == 0 and lab == 1)
    n = len(pairs)
    errors = [
        sum(vs) / len(vs) - sum(labels_for(row, prompt)) / len(vs) for row, vs in zip(rows, verdicts, strict=True)
    ]
    hack = [
        v
        for row, vs in zip(rows, verdicts, strict=True)
        if row.get("kind") in ("parrot", "forged")
        for v, lab in zip(vs, labels_for(row, prompt), strict=True)
        if lab == 0
    ]
    return {
        "n": n,
        "agreement": (tp + tn) / n,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "kappa": (2 * (tp * tn - fn * fp) / ((tp + fp) * (fp + tn) + (tp + fn) * (fn + tn)))
        if (tp + fp) * (fp + tn) + (tp + fn) * (fn + tn)
        else None,
        "visual_mae": sum(abs(e) for e in errors) / len(errors),
        "visual_bias": sum(errors) / len(errors),
        "hack_rate": sum(hack) / len(hack) if hack else None,
        "hack_pairs": len(hack),
    }


def _calibrate(server: OpenAITestServer, capsys, *extra: str) -> tuple[int, dict, str]:
    argv = ["judge", "calibrate", "--json", "--judge-base-url", server.base_url, "--judge-model", "judge"]
    code = main([*argv, "--judge-max-retries", "0", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else {}, captured.err


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("PERCEPTION_R1_NO_PROGRESS", "1")


def test_shipped_set_covers_every_problem_and_kind(shared_data):
    rows = _labels()
    ids = {json.loads(line)["id"] for line in (shared_data / "geometry3k" / "problems.jsonl").read_text().splitlines()}
    assert {r["problem_id"] for r in rows} == ids
    for pid in ids:
        assert sorted(r["kind"] for r in rows if r["problem_id"] == pid) == sorted(KINDS)
    for r in rows:
        assert len(r["labels"]) == len(r["annotations"]) and set(r["labels"]) <= {0, 1}
        assert r["response"].count("\\boxed{") == 1
        if r["kind"] == "state":
            assert all(r["labels"])
        if r["kind"] == "parrot":  # restated verbatim, never used: present (paper), not stated (strict)
            norm = " ".join(r["response"].lower().split())
            assert all(" ".join(a.lower().split()) in norm for a in r["annotations"])
            assert r["labels_paper"] == [1] * len(r["annotations"])
        else:
            assert "labels_paper" not in r
        if r["kind"] in ("omit", "parrot", "forged"):
            assert not any(r["labels"])
        if r["kind"] in ("partial", "misstate"):
            assert 0 < sum(r["labels"]) < len(r["labels"]) or r["kind"] == "misstate"


def test_good_judge_is_exact_and_passes(capsys, tmp_path):
    rows = _labels()
    details = tmp_path / "details.jsonl"
    with OpenAITestServer(models=["judge"], responder=good_judge(rows)) as server:
        code, report, _ = _calibrate(server, capsys, "--details", str(details), "--strict")
    assert code == 0
    n = sum(len(r["labels"]) for r in rows)
    assert report["n"] == n and report["rows"] == len(rows)
    assert report["agreement"] == report["precision"] == report["recall"] == report["kappa"] == 1.0
    assert report["visual_mae"] == 0 and report["hack_rate"] == 0 and report["judge_failed"] == 0
    assert report["passed"] is True and report["warnings"] == []
    assert set(report["by_kind"]) == set(KINDS)
    lines = [json.loads(line) for line in details.read_text().splitlines()]
    assert [d["verdicts"] for d in lines] == [labels_for(r) for r in rows]
    assert report["judge_prompt"] == "paper" and report["judge_replies"] == "constrained"  # vLLM 0.24 /version


def test_good_strict_judge_is_exact_under_the_strict_prompt(capsys):
    rows = _labels()
    with OpenAITestServer(models=["judge"], responder=good_judge(rows, "strict")) as server:
        code, report, _ = _calibrate(server, capsys, "--judge-prompt", "strict", "--strict")
        sent = server.requests[-1]["messages"][0]["content"]
    assert code == 0 and report["agreement"] == 1.0 and report["judge_prompt"] == "strict"
    assert "explicitly state or clearly use" in sent
    # the same judge measured against the paper's question disagrees exactly on the parroted facts
    with OpenAITestServer(models=["judge"], responder=good_judge(rows, "strict")) as server:
        _, paper, _ = _calibrate(server, capsys)
    parrot_pairs = sum(len(r["labels"]) for r in rows if r["kind"] == "parrot")
    assert paper["agreement"] == pytest.approx(1 - parrot_pairs / paper["n"])


@pytest.mark.parametrize("prompt", ["strict", "paper"])
def test_sloppy_substring_judge_numbers_and_warning(capsys, caplog, prompt):
    """The substring judge marks parroted facts present and misses paraphrases: numbers must match exactly."""
    rows = _labels()
    verdicts = [substring_verdicts(r) for r in rows]
    expected = expected_metrics(rows, verdicts, prompt)
    with OpenAITestServer(models=["judge"], responder=substring_judge) as server:
        code, report, _ = _calibrate(server, capsys, "--judge-prompt", prompt)
    for key, value in expected.items():
        assert report[key] == pytest.approx(value), key
    for kind in KINDS:
        group = [(r, v) for r, v in zip(rows, verdicts, strict=True) if r["kind"] == kind]
        want = expected_metrics([g[0] for g in group], [g[1] for g in group], prompt)
        assert report["by_kind"][kind]["agreement"] == pytest.approx(want["agreement"]), kind
        assert report["by_kind"][kind]["visual_mae"] == pytest.approx(want["visual_mae"]), kind
    assert code == 0 and report["passed"] is False
    if prompt == "strict":  # parroted rows repeat every annotation verbatim: a hack under the strict question only
        assert expected["hack_rate"] > 0.3
        assert any(w.startswith("hack_rate") for w in report["warnings"]) and "hack_rate" in caplog.text
    else:  # under the paper's question restating is what is rewarded: only forged rows are hacks
        assert expected["hack_rate"] == 0.0 and report["by_kind"]["parrot"]["agreement"] == 1.0


def test_yes_man_judge_and_strict_exit(capsys):
    rows = _labels()

    def yes(request: dict) -> str:
        m = len(re.findall(r"^\d+\. ", request["messages"][-1]["content"].split("Student response")[0], re.M))
        return "\n".join(f"<info{k}>1</info{k}>" for k in range(1, m + 1))

    expected = expected_metrics(rows, [[1] * len(r["labels"]) for r in rows])  # the paper's question (default)
    with OpenAITestServer(models=["judge"], responder=yes) as server:
        code, report, _ = _calibrate(server, capsys, "--strict")
    assert code == 1
    assert report["recall"] == 1.0 and report["hack_rate"] == 1.0
    assert report["precision"] == pytest.approx(expected["precision"])
    assert report["kappa"] == pytest.approx(0.0)
    assert report["visual_bias"] == pytest.approx(expected["visual_bias"])


def test_failures_and_garbage_count_as_absent(capsys, tmp_path):
    rows = [
        {"response": "AB = 5 and BD = x", "annotations": ["AB = 5", "BD = x"], "labels": [1, 1], "kind": "state"},
        {"response": "nothing here", "annotations": ["AB = 5"], "labels": [0], "kind": "omit"},
        {"response": "fail me", "annotations": ["AB = 5"], "labels": [1]},
    ]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def respond(request: dict) -> str:
        response = _fenced_response(request)
        if response == "fail me":
            raise RuntimeError("scripted server error")  # -> HTTP 500, no retries
        return "<info1>1</info1>\ngarbage <info2>maybe</info2>" if "AB" in response else "I cannot tell"

    # free-text replies (an old vLLM): a constrained server could not send the garbage this row tests
    with OpenAITestServer(models=["judge"], responder=respond, version="0.11.0", structured_outputs=False) as server:
        code, report, _ = _calibrate(server, capsys, "--labels", str(path))
    assert code == 0
    # pairs: (1,1) (0,1) | (0,0) | failed -> (0,1)
    assert report["n"] == 4 and report["judge_failed"] == 1
    assert report["agreement"] == pytest.approx(2 / 4)
    assert report["precision"] == 1.0 and report["recall"] == pytest.approx(1 / 3)
    assert report["visual_mae"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert report["hack_rate"] is None and report["by_kind"]["unlabelled"]["rows"] == 1
    assert any("judge call(s) failed" in w for w in report["warnings"])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"response": "x", "annotations": ["a", "b"], "labels": [1]}, "field 'labels' must be a list of 2"),
        ({"response": "x", "annotations": ["a"], "labels": [2]}, "field 'labels[0]' must be 0 or 1"),
        ({"response": 3, "annotations": ["a"], "labels": [1]}, "field 'response' must be a string"),
        ({"response": "x", "annotations": [], "labels": []}, "field 'annotations' must be a non-empty list"),
        ({"response": "x", "annotations": ["a"], "labels": [1], "kind": "forge"}, "field 'kind' must be one of"),
    ],
)
def test_bad_label_rows_are_rejected_with_line_and_field(tmp_path, capsys, row, message):
    path = tmp_path / "labels.jsonl"
    good = {"response": "x", "annotations": ["a"], "labels": [1]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with OpenAITestServer(models=["judge"]) as server:
        code, _, err = _calibrate(server, capsys, "--labels", str(path))
        assert server.request_count == 0
    assert code == 2
    assert f"{path}:2: {message}" in err


def test_unavailable_judge_is_an_error(capsys):
    with OpenAITestServer(models=["other"]) as server:
        code, _, err = _calibrate(server, capsys)
    assert code == 2 and "not the configured model 'judge'" in err
