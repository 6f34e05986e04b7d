"""``perception-r1 score`` promises that mutation testing (docs/mutation.md) found unguarded, run in-process through
``perception_r1.cli.main`` against a real judge test server: bad input is exit 2 with the line and field, a run
that fails while writing leaves the old output untouched, the failure-rate limit's edges, input order, the resume
file's header. Expected scores are worked out by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from perception_r1.cli import main
from perception_r1.commands import score as score_cmd
from perception_r1.testing import OpenAITestServer

GOOD = "<think>\nAB = 5 and BC = 12, so AC = 13.\n</think>\n<answer>\n\\boxed{13}\n</answer>"
JUDGED = {"data_source": "geo3k_visual", "response": GOOD, "ground_truth": "13",
          "extra_info": {"visual_annotations": ["AB = 5", "BC = 12"]}}  # fmt: skip
OCR = {"data_source": "pageocr", "response": "Hello World", "ground_truth": "Hello World"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in ("VLLM_SERVER_BASE_URL", "VLLM_MODEL_NAME", "VLLM_SERVER_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PERCEPTION_R1_NO_PROGRESS", "1")


def write_rows(tmp_path: Path, rows: list) -> Path:
    src = tmp_path / "rollouts.jsonl"
    src.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return src


def run(tmp_path: Path, rows: list, *args: str) -> tuple[int, Path]:
    src = write_rows(tmp_path, rows)
    out = tmp_path / "scores.jsonl"
    code = main(["score", "--input", str(src), "--output", str(out), "--workers", "1", *args])
    return code, out


def judge_args(server: OpenAITestServer) -> list[str]:
    return ["--judge-base-url", server.base_url, "--judge-model", "judge", "--judge-max-retries", "0"]


def test_list_valued_extra_info_is_exit_2_naming_the_line_and_field(tmp_path, capsys):
    code, out = run(tmp_path, [OCR, {**OCR, "extra_info": ["a", "list"]}])
    err = capsys.readouterr().err
    assert code == 2
    assert "rollouts.jsonl:2: field 'extra_info' must be an object, got list" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.jsonl"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ('["a list"]', "rollouts.jsonl:2: expected a JSON object, got list"),
        ({"data_source": "pageocr", "response": "x"}, "rollouts.jsonl:2: missing field 'ground_truth'"),
        ({**OCR, "response": 7}, "rollouts.jsonl:2: field 'response' must be a string, got int"),
        ({**OCR, "data_source": "nope"}, "rollouts.jsonl:2: field 'data_source': unknown data_source 'nope'"),
        ({**OCR, "ground_truth": ""}, "rollouts.jsonl:2: ground_truth: expected the page text"),
    ],
)
def test_malformed_rows_are_exit_2_and_write_nothing(tmp_path, capsys, bad, message):
    code, _ = run(tmp_path, [OCR, bad])
    assert code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.jsonl"]


def test_rows_come_back_in_input_order_with_hand_computed_scores(tmp_path):
    """OCR: 1 + 1 for a perfect page; "Hello" for "Hello World" is 6 deletions in 11 characters: 1 + 5/11."""
    rows = [OCR, {**OCR, "response": "Hello"}, {**OCR, "response": ""}] * 3
    code, out = run(tmp_path, rows)
    assert code == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["score"] for r in got] == pytest.approx([2.0, 1 + 5 / 11, 0.0] * 3)
    assert list(got[0]) == ["score", "format", "accuracy", "n_chars"]
    assert not (tmp_path / "scores.jsonl.resume.jsonl").exists()  # removed once the output is written


def test_an_empty_input_writes_an_empty_output(tmp_path, caplog):
    code, out = run(tmp_path, [])
    assert code == 0 and out.read_text() == ""
    assert f"{tmp_path / 'rollouts.jsonl'} has no rows: writing an empty {out}" in caplog.messages


def test_an_unreadable_input_is_exit_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    code = main(["score", "--input", str(missing), "--output", str(tmp_path / "out.jsonl"), "--workers", "1"])
    assert code == 2
    assert f"error: cannot read {missing}: No such file or directory" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_workers_sets_the_number_of_isolated_check_processes(tmp_path):
    """``--workers 3`` runs exactly 3 math-verify processes (not the machine's default), watched in /proc while the
    command runs (workers other tests left running in this process are not counted)."""
    import os
    import threading

    from process_state import children

    def isolation_children() -> set[int]:
        return children(os.getpid(), b"perception_r1.isolation")

    before = isolation_children()
    started: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            started.update(isolation_children() - before)
            done.wait(0.01)

    rows = [{"data_source": "geo3k_visual", "response": GOOD.replace("13", str(i)), "ground_truth": "13"}
            for i in range(30)]  # fmt: skip
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        code, out = run(tmp_path, rows, "--workers", "3")  # run() passes --workers 1 first; the last one counts
    finally:
        done.set()
        watcher.join()
    assert code == 0 and len(out.read_text().splitlines()) == 30
    assert len(started) == 3, started


@pytest.mark.parametrize("rate", ["-0.1", "1.5"])
def test_failure_rate_outside_0_to_1_is_refused(tmp_path, capsys, rate):
    code, out = run(tmp_path, [OCR], "--max-judge-failure-rate", rate)
    assert code == 2 and f"--max-judge-failure-rate must be between 0 and 1, got {float(rate)}" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_failing_while_writing_leaves_the_old_output_untouched(tmp_path, capsys):
    """Every judge call fails (403) after a healthy preflight: the rows are scored, then writing the output stops
    above the failure limit. The previous output is still there, byte for byte, with no temp file beside it, and
    the resume file keeps the rows."""
    out = tmp_path / "scores.jsonl"
    out.write_text("previous run\n")
    with OpenAITestServer(models=["judge"]) as server:
        server.fail_next(100, status=403)
        code, _ = run(tmp_path, [JUDGED, JUDGED, OCR], *judge_args(server))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "judge failed for 2 of 2 judged rows (100%)" in err and "no output is written" in err
    assert out.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.jsonl", "scores.jsonl", "scores.jsonl.resume.jsonl"]


def test_a_failure_rate_equal_to_the_limit_still_writes(tmp_path, capsys, caplog):
    """One of two judged rows failing is a rate of 0.5, which the default limit (0.5) allows: written, with a
    warning; the judged row that failed has visual 0 and judge_failed 1."""
    with OpenAITestServer(models=["judge"]) as server:
        server.fail_next(1, status=403)
        code, out = run(tmp_path, [JUDGED, JUDGED], *judge_args(server), "--judge-max-concurrency", "1")
    assert code == 0, capsys.readouterr().err
    assert "judge failed for 1 of 2 judged rows (50%)" in caplog.text and "those rows have visual = 0" in caplog.text
    pattern = r"judge failed for 1 of 2 judged rows \(50%\): .+ \(1 row\); those rows have visual = 0, judge_failed = 1"
    assert [r.levelname for r in caplog.records if re.fullmatch(pattern, r.getMessage())] == ["WARNING"]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["judge_failed"] for r in got) == [0, 1]


def test_no_judge_for_annotated_rows_is_refused_before_scoring(tmp_path, capsys, caplog):
    code, out = run(tmp_path, [JUDGED, OCR])
    err = capsys.readouterr().err
    missing = (
        "1 of 2 rows have visual annotations but no judge is configured (set --judge-base-url or VLLM_SERVER_BASE_URL)"
    )
    assert code == 1
    assert f"error: {missing}; pass --max-judge-failure-rate 1 to score them with visual = 0, judge_failed = 1" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollouts.jsonl"]
    code, out = run(tmp_path, [JUDGED, OCR], "--max-judge-failure-rate", "1")
    assert code == 0
    assert f"{missing}: they get visual = 0, judge_failed = 1" in caplog.messages
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got[0]["judge_failed"] == 1 and got[0]["visual"] == 0.0 and got[1]["score"] == 2.0


def test_a_resumed_runs_progress_bar_counts_the_rows_already_done(tmp_path, capsys, monkeypatch):
    """3 of 4 judge calls fail (above the limit: exit 1, the answered row kept); the rerun's bar starts at 1 of 4
    and ends at 4 of 4, not at the 3 rows it scored."""
    with OpenAITestServer(models=["judge"]) as server:
        server.fail_next(3, status=503)
        args = [*judge_args(server), "--judge-max-concurrency", "1"]
        code, out = run(tmp_path, [JUDGED] * 4, *args)
        assert code == 1 and not out.exists()
        capsys.readouterr()
        monkeypatch.setenv("PERCEPTION_R1_NO_PROGRESS", "0")
        code, out = run(tmp_path, [JUDGED] * 4, *args)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "scoring: 100%" in err and "| 4/4 [" in err and "| 3/4 [" not in err.rsplit("\r", 1)[-1]


def test_resume_header_records_what_the_rows_were_scored_with(tmp_path):
    src = write_rows(tmp_path, [OCR, JUDGED])
    scan = score_cmd.scan_input(str(src))
    assert (scan.rows, scan.judged) == (2, 1) and len(scan.sha256) == 64
    from perception_r1.judge.client import JudgeSettings
    from perception_r1.scoring import RewardScorer

    scorer = RewardScorer({"case_sensitive": "false"}, workers=1)
    try:
        judge = JudgeSettings(base_urls=("http://127.0.0.1:9",), model="m", api_key="secret")
        header = score_cmd.resume_header(scan, scorer, judge)
        assert header["input"] == {"sha256": scan.sha256, "rows": 2}
        assert header["settings"]["pageocr"]["case_sensitive"] is False
        assert header["judge"] == {"model": "m", "temperature": judge.temperature, "max_tokens": judge.max_tokens}
        assert "secret" not in json.dumps(header)
        assert json.loads(json.dumps(header)) == header  # the file gives back what a rerun compares it with
        no_judged = score_cmd.InputScan(rows=2, judged=0, sha256=scan.sha256)
        assert score_cmd.resume_header(no_judged, scorer, judge)["judge"] is None  # the judge does not matter
    finally:
        scorer.close()


def test_the_input_fingerprint_is_of_every_byte_read_in_bounded_memory(tmp_path):
    """The resume header's sha256 is of the whole file (one changed letter is another input, at the same row
    count), and it is read in blocks: a 24 MB input never needs a 24 MB buffer."""
    import hashlib
    import tracemalloc

    src = write_rows(tmp_path, [{**OCR, "response": "x" * 3000}] * 8000)
    size = src.stat().st_size
    assert size > 24_000_000
    tracemalloc.start()
    try:
        scan = score_cmd.scan_input(str(src))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert scan.sha256 == hashlib.sha256(src.read_bytes()).hexdigest() and scan.rows == 8000
    assert peak < size / 2, peak  # about 7 MB here; one buffer of the file would be all of it
    text = src.read_text()
    other = tmp_path / "other.jsonl"
    other.write_text(text[:-10] + text[-10:].replace("d", "D"))
    assert score_cmd.scan_input(str(other)).sha256 != scan.sha256


# ------------------------------------------------------------------ the resume file, on real files


def header(sha: str = "abc", rows: int = 3, settings: dict | None = None, judge: dict | None = None) -> dict:
    return {"format": score_cmd.RESUME_FORMAT, "version": score_cmd.RESUME_VERSION,
            "input": {"sha256": sha, "rows": rows}, "settings": settings or {"t": {"w": 1}}, "judge": judge}  # fmt: skip


def scored(value: float, judged: bool = False, failed: bool = False, isolated_error: bool = False):
    from perception_r1.scoring import Scored

    values = {"score": value, **({"judge_failed": int(failed)} if judged else {})}
    return Scored(values=values, judged=judged, isolated_error=isolated_error)


def test_resume_file_keeps_rows_and_knows_which_are_final(tmp_path):
    path = tmp_path / "r.jsonl"
    resume = score_cmd.ResumeFile(path, header(), rows=3)
    resume.add(2, scored(0.5))
    resume.add(0, scored(1.0, judged=True, failed=True))  # a judge failure is asked again on a rerun
    resume.add(1, scored(2.0, isolated_error=True))  # so is a crashed check
    assert resume.done == 1
    resume.close()
    first = json.loads(path.read_text().splitlines()[0])
    assert first == header()
    again = score_cmd.ResumeFile(path, header(), rows=3)
    try:
        assert again.resumed == 1 and list(again.final) == [0, 0, 1]
        assert [e["v"]["score"] for e in again.entries()] == [1.0, 2.0, 0.5]
        assert [e["judged"] for e in again.entries()] == [True, False, False]
        again.add(0, scored(3.0, judged=True))
        assert again.done == 2
    finally:
        again.close()
    assert next(again.entries())["v"]["score"] == 3.0  # the latest entry of a row wins


def test_resume_file_cuts_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    resume = score_cmd.ResumeFile(path, header(), rows=3)
    resume.add(0, scored(1.0))
    resume.close()
    size = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(b'{"i": 1, "final": tr')
    again = score_cmd.ResumeFile(path, header(), rows=3)
    again.close()
    assert path.stat().st_size == size and again.resumed == 1
    assert f"{path}: dropping a torn last line (20 bytes) left by an interrupted run" in caplog.messages
    caplog.clear()
    score_cmd.ResumeFile(path, header(), rows=3).close()  # an intact file: nothing to drop, nothing said
    assert path.stat().st_size == size and "torn" not in caplog.text


def test_resume_rows_reach_the_file_every_tenth_second_and_the_disk_every_second(tmp_path, monkeypatch):
    """Rows are buffered (a write per row would cost a system call each) but reach the file 0.1 s after the last
    flush and the disk 1 s after the last fsync, so a kill loses at most 0.1 s of scoring. A clock the test sets
    stands in for ``time.monotonic``; its times make each limit exact in binary floating point (0.1625 - 0.0625 is
    0.1), and a sum of two times instead of their difference would cross a limit early."""
    import os
    import types

    now = [0.0625]
    monkeypatch.setattr(score_cmd, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    path = tmp_path / "r.jsonl"
    resume = score_cmd.ResumeFile(path, header(rows=5), rows=5)
    real_fsync, synced = os.fsync, []
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    sizes = []
    try:
        for index, at in enumerate([0.0625, 0.1125, 0.1625, 0.96, 1.0625]):
            now[0] = at
            resume.add(index, scored(1.0))
            sizes.append((path.stat().st_size, len(synced)))
    finally:
        resume.close()
    header_size = len(json.dumps(header(rows=5))) + 1
    row = len(json.dumps({"i": 0, "final": True, "judged": False, "v": {"score": 1.0}})) + 1
    assert sizes == [
        (header_size, 0),  # buffered
        (header_size, 0),  # 0.05 s: still buffered
        (header_size + 3 * row, 0),  # 0.1 s after opening: in the file, not yet on disk
        (header_size + 4 * row, 0),  # 0.9 s since the last fsync (at opening)
        (header_size + 5 * row, 1),  # 1 s: on disk too
    ]
    assert len(synced) == 2  # closing syncs what is left
    again = score_cmd.ResumeFile(path, header(rows=5), rows=5)
    try:
        assert [e["i"] for e in again.entries()] == [0, 1, 2, 3, 4]
    finally:
        again.close()


@pytest.mark.parametrize(
    "other, message",
    [
        (header(sha="zzz"), "holds rows scored with another input (it has input sha256 zzz…, 3 rows)"),
        (header(settings={"t": {"w": 2}}), "holds rows scored with another settings (it has its own settings)"),
        (header(judge={"model": "other"}), "holds rows scored with another judge model (it has judge 'other')"),
        ({**header(), "version": 99}, "holds rows scored with another file version (it has 99)"),
        (
            header(sha="zzz", settings={"t": {"w": 2}}),
            "holds rows scored with another input and settings (it has input sha256 zzz…, 3 rows, its own settings)",
        ),
    ],
)
def test_resume_file_from_another_run_is_refused(tmp_path, other, message):
    path = tmp_path / "r.jsonl"
    score_cmd.ResumeFile(path, other, rows=3).close()
    with pytest.raises(score_cmd.ResumeMismatch) as info:
        score_cmd.ResumeFile(path, header(), rows=3)
    assert str(info.value) == (
        f"{path} {message}; rerun with the same input and settings to resume, or pass --restart to score every row "
        "again"
    )
    fresh = score_cmd.ResumeFile(path, header(), rows=3, restart=True)  # --restart discards it
    fresh.close()
    assert json.loads(path.read_text()) == header()


def test_a_refusal_names_a_files_missing_judge_and_a_short_input_hash(tmp_path):
    """The file was scored without a judge, this run has one: "judge None"; a full sha256 is cut to 12 digits."""
    path = tmp_path / "r.jsonl"
    sha = "0123456789abcdef" * 4
    score_cmd.ResumeFile(path, header(sha=sha), rows=3).close()
    with pytest.raises(score_cmd.ResumeMismatch) as info:
        score_cmd.ResumeFile(path, header(judge={"model": "m"}), rows=3)
    assert "holds rows scored with another input and judge model (it has input sha256 0123456789ab…, 3 rows, judge None)" in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json\n", "exists but is not a score resume file"),
        ('{"format": "something else"}\n', "exists but is not a score resume file"),
        (json.dumps(header()) + '\n{"i": 0, "final": true}\n', "corrupt row at byte"),
        (json.dumps(header()) + '\n{"i": 0}\n', "corrupt row at byte"),
        (json.dumps(header()) + '\n{"i": 7, "final": true, "v": {"score": 1}}\n', "row index 7 out of range"),
        (json.dumps(header()) + '\n{"i": 3, "final": true, "v": {"score": 1}}\n', "row index 3 out of range"),
        (json.dumps(header()) + '\n{"i": -1, "final": true, "v": {"score": 1}}\n', "row index -1 out of range"),
    ],
)
def test_a_damaged_resume_file_is_refused(tmp_path, content, message):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    with pytest.raises(score_cmd.ResumeMismatch, match=message):
        score_cmd.ResumeFile(path, header(), rows=3)


def test_a_resume_file_in_use_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    first = score_cmd.ResumeFile(path, header(), rows=3)
    try:
        with pytest.raises(score_cmd.CommandError, match="is in use by another `perception-r1 score` run"):
            score_cmd.ResumeFile(path, header(), rows=3)
    finally:
        first.close()
    score_cmd.ResumeFile(path, header(), rows=3).close()  # free again once closed


def test_failure_reasons_are_summarised():
    from collections import Counter

    assert score_cmd._reasons(Counter()) == "failed in an earlier run"
    assert score_cmd._reasons(Counter({"403": 2, "timeout": 1})) == "403 (2 rows); timeout (1 row)"
    many = Counter({f"e{i}": 10 - i for i in range(5)})
    assert score_cmd._reasons(many) == "e0 (10 rows); e1 (9 rows); e2 (8 rows)"


def test_check_rate_accepts_the_edges():
    assert score_cmd._check_rate(0.0) == 0.0 and score_cmd._check_rate(1.0) == 1.0
    with pytest.raises(score_cmd.CommandError):
        score_cmd._check_rate(1.0001)


def test_sigterm_ends_the_run_like_ctrl_c():
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with score_cmd._sigterm_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread: the handler raises here
            for _ in range(1000):  # or at the latest within the next few bytecodes
                pass
    assert signal.getsignal(signal.SIGTERM) is before
