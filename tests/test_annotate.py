"""``perception-r1 annotate`` against a real local OpenAI-compatible server with scripted answers."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from perception_r1.annotate import prompts
from perception_r1.annotate.store import StageStore
from perception_r1.cli import main
from perception_r1.testing import OpenAITestServer

# Per Geometry3K problem: an answer written differently from the dataset's (math-verify must match them), the
# facts a scripted "strong model" reads off the diagram (one duplicate, to check de-duplication) and a wrong answer.
SCRIPT = {
    "11": ("80", ["XY ⊥ AB at M", "XZ ⊥ CD at N", "xy ⊥ ab at m"], "40"),
    "12": ("13", ["AB = 5", "BD = x", "AC = 7.5", "CE = 4.5"], "12"),
    "13": ("9", ["AD = 2x + 3", "JD = 4y", "AC = 8y - 36"], "18"),
    "14": ("48", ["the three horizontal lines are parallel", "the tick marks show equal segments"], "36"),
    "15": ("5\\sqrt{3}", ["hypotenuse = 10", "angle opposite y = 60°", "right angle between x and y"], "5"),
    "16": ("10.0", ["EB ∥ DC", "B lies on AC", "E lies on AD"], "13.5"),
    "17": ("120", ["∠N ≅ ∠Q (double arcs)", "∠M ≅ ∠P"], "60"),
    "18": ("22", ["∠CBA = (3y + 3)°", "∠BCD = (4y - 19)°"], "20"),
    "19": ("\\frac{2\\sqrt{2}}{5}", ["AD = 10", "AB = 8", "AE ⊥ DE", "AE = BE = CE"], "\\frac{\\sqrt{2}}{5}"),
    "20": ("16", ["∠XCA = (y + 58)°", "∠ABX = (5y - 6)°"], "32"),
}
EXPECTED_ANNOTATIONS = {pid: prompts.dedupe(facts, 8) for pid, (_, facts, _) in SCRIPT.items()}


def _problems(shared_data: Path) -> list[dict]:
    path = shared_data / "geometry3k" / "problems.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _image_ids(shared_data: Path) -> dict[str, str]:
    """sha256 of each diagram's bytes -> problem id (the scripted model recognises problems by their image)."""
    return {
        hashlib.sha256((shared_data / "geometry3k" / row["image"]).read_bytes()).hexdigest(): str(row["id"])
        for row in _problems(shared_data)
    }


def _user_content(request: dict) -> list | str:
    return [m for m in request["messages"] if m["role"] == "user"][-1]["content"]


def _image_bytes(request: dict) -> list[bytes]:
    content = _user_content(request)
    out = []
    for part in content if isinstance(content, list) else []:
        if part.get("type") == "image_url":
            url = part["image_url"]["url"]
            assert url.startswith("data:image/png;base64,")
            out.append(base64.b64decode(url.split(",", 1)[1]))
    return out


def _trajectory(pid: str, correct: bool) -> str:
    answer, facts, wrong = SCRIPT[pid]
    return (
        f"<think>\nFrom the diagram: {'; '.join(facts)}.\nFACTS: {' | '.join(facts)}\nSo we solve.\n</think>\n"
        f"<answer>\n\\boxed{{{answer if correct else wrong}}}\n</answer>"
    )


def _is_extract(request: dict) -> bool:
    return not isinstance(_user_content(request), list)


def _facts_in(request: dict) -> list[str]:
    text = request["messages"][1]["content"]
    line = next(x for x in text.splitlines() if x.startswith("FACTS: "))
    return line[len("FACTS: ") :].split(" | ")


class Scripted:
    """A responder: distillation answers correctly for even seeds, wrongly for odd; extraction returns the facts."""

    def __init__(self, shared_data: Path, extract_reply=None) -> None:
        self.ids = _image_ids(shared_data)
        self.extract_reply = extract_reply
        self.replies: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: dict) -> str:
        if _is_extract(request):
            facts = _facts_in(request)
            if self.extract_reply is not None:
                text = self.extract_reply(request, facts)
            else:
                text = json.dumps({"annotations": facts}, ensure_ascii=False)
        else:
            images = _image_bytes(request)
            pid = self.ids[hashlib.sha256(images[0]).hexdigest()]
            text = _trajectory(pid, correct=request.get("seed", 0) % 2 == 0)
        with self.lock:
            self.replies.append(text)
        return text


def _args(shared_data: Path, server: OpenAITestServer, out: Path, *extra: str) -> list[str]:
    return [
        "annotate",
        "--input",
        str(shared_data / "geometry3k" / "problems.jsonl"),
        "--output",
        str(out),
        "--distill-base-url",
        server.base_url,
        "--distill-model",
        "vlm",
        "--extract-model",
        "llm",
        "--samples",
        "2",
        "--max-retries",
        "0",
        *extra,
    ]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def no_progress(monkeypatch):
    monkeypatch.setenv("PERCEPTION_R1_NO_PROGRESS", "1")


def test_full_pipeline_on_geometry3k(shared_data, tmp_path, capsys, no_progress):
    scripted = Scripted(shared_data)
    out = tmp_path / "annotated.jsonl"
    with OpenAITestServer(models=["vlm", "llm"], responder=scripted) as server:
        argv = _args(shared_data, server, out, "--json", "--concurrency", "3")
        argv += ["--distill-price-in", "2", "--distill-price-out", "10", "--extract-price-in", "1"]
        code = main(argv)
        summary = json.loads(capsys.readouterr().out)
        requests = list(server.requests)
        log = list(server.log)
        max_in_flight = server.max_in_flight
    assert code == 0
    rows = _read_jsonl(out)
    problems = {str(p["id"]): p for p in _problems(shared_data)}
    assert [r["id"] for r in rows] == [str(p["id"]) for p in _problems(shared_data)]
    for row in rows:
        source = problems[row["id"]]
        assert row["problem"] == source["problem"] and row["answer"] == source["answer"]
        assert row["images"] == [str((shared_data / "geometry3k" / source["image"]).resolve())]
        assert row["choices"] == source["choices"]
        assert row["visual_annotations"] == EXPECTED_ANNOTATIONS[row["id"]]
        prov = row["provenance"]
        assert prov["distill_model"] == "vlm" and prov["extract_model"] == "llm"
        assert prov["correct_samples"] == [0]  # seed 1 answers wrongly and is filtered out
        (traj,) = prov["trajectories"]
        assert traj["sample"] == 0 and traj["response"] == _trajectory(row["id"], correct=True)

    distill = [r for r in requests if not _is_extract(r)]
    extract = [r for r in requests if _is_extract(r)]
    assert len(distill) == 20 and len(extract) == 10
    for request in distill:
        assert request["model"] == "vlm" and request["seed"] in (0, 1)
        (image,) = _image_bytes(request)
        pid = _image_ids(shared_data)[hashlib.sha256(image).hexdigest()]
        assert problems[pid]["problem"] in _user_content(request)[-1]["text"]
    for request in extract:
        assert request["model"] == "llm"
        assert request["response_format"]["type"] == "json_schema"
        assert request["response_format"]["json_schema"]["schema"]["required"] == ["annotations"]
    assert max_in_flight <= 3

    # Token and cost accounting: the test server reports len(messages JSON)//4 prompt tokens and len(text)//4 (min 1)
    # completion tokens; the sums must be the server's own.
    completion = [max(1, len(t) // 4) for t in scripted.replies]
    d, e = summary["stages"]["distill"], summary["stages"]["extract"]
    prompt_d = sum(r.usage["prompt_tokens"] for r in log if not _is_extract(r.body))
    prompt_e = sum(r.usage["prompt_tokens"] for r in log if _is_extract(r.body))
    assert d["calls"] == 20 and e["calls"] == 10 and d["cached"] == e["cached"] == 0
    assert d["prompt_tokens"] == prompt_d > 200 and e["prompt_tokens"] == prompt_e > 100
    assert d["completion_tokens"] + e["completion_tokens"] == sum(completion)
    expected_cost = (prompt_d * 2 + d["completion_tokens"] * 10 + prompt_e * 1) / 1e6
    assert summary["cost_usd"] == pytest.approx(expected_cost)
    assert summary["status"] == {"skipped_input": 0, "ok": 10}
    report = _read_jsonl(Path(str(out) + ".report.jsonl"))
    assert [r["status"] for r in report] == ["ok"] * 10 and all(r["correct"] == 1 for r in report)

    # The rows feed the geo3k training builder as they are (plain rows with an annotation list).
    import pyarrow.parquet as pq

    parquet = tmp_path / "train.parquet"
    assert main(["data", "geo3k", "--input", str(out), "--output", str(parquet)]) == 0
    built = pq.read_table(parquet).to_pylist()
    assert [b["extra_info"]["visual_annotations"] for b in built] == [r["visual_annotations"] for r in rows]
    assert [b["reward_model"]["ground_truth"] for b in built] == [r["answer"] for r in rows]
    assert all(b["data_source"] == "geo3k_visual" and len(b["images"]) == 1 for b in built)


def test_limit_and_rerun_reuses_every_call(shared_data, tmp_path, capsys, no_progress):
    out = tmp_path / "a.jsonl"
    with OpenAITestServer(models=["vlm", "llm"], responder=Scripted(shared_data)) as server:
        assert main(_args(shared_data, server, out, "--limit", "3", "--json")) == 0
        first = json.loads(capsys.readouterr().out)
        assert server.request_count == 3 * 2 + 3
        assert main(_args(shared_data, server, out, "--limit", "3", "--json")) == 0
        second = json.loads(capsys.readouterr().out)
        assert server.request_count == 9  # nothing repeated
    assert first["rows_out"] == second["rows_out"] == 3
    assert second["stages"]["distill"]["cached"] == 6 and second["stages"]["distill"]["calls"] == 0
    assert second["stages"]["distill"]["cost_usd"] == 0


def test_bad_inputs_reported_and_skipped(shared_data, tmp_path, caplog, no_progress):
    good = _problems(shared_data)[0]
    image = str(shared_data / "geometry3k" / good["image"])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    rows = [
        {**good, "image": image},
        {**good, "id": "missing-image", "image": str(tmp_path / "nope.png")},
        {**good, "id": "null-answer", "answer": None, "image": image},
        {**good, "id": "list-answer", "answer": ["80"], "image": image},
        ["not", "an", "object"],
        {**good, "id": "no-problem", "problem": "", "image": image},
        {**good, "image": image},  # duplicate id
        {**good, "id": "corrupt", "image": str(corrupt)},
        {"id": "no-image", "problem": "Find x.", "answer": "3"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    out = tmp_path / "out.jsonl"
    with OpenAITestServer(models=["vlm", "llm"], responder=Scripted(shared_data)) as server:
        argv = _args(shared_data, server, out)
        argv[argv.index("--input") + 1] = str(src)
        assert main(argv) == 0
    assert [r["id"] for r in _read_jsonl(out)] == [str(good["id"])]
    report = {r["line"]: r for r in _read_jsonl(tmp_path / "out.jsonl.report.jsonl")}
    assert report[1]["status"] == "ok"
    expected = {
        2: "image not found",
        3: "field 'answer': unreadable answer None",
        4: "field 'answer': unreadable answer ['80']",
        5: "expected a JSON object, got list",
        6: "field 'problem'",
        7: "field 'id': duplicate id '11'",
        8: "image unreadable",
        9: "field 'images'/'image': missing",
        10: "invalid JSON",
    }
    for line, text in expected.items():
        assert report[line]["status"] == "skipped_input" and text in report[line]["detail"], report[line]
    assert "in.jsonl:2 (id missing-image): skipped: image not found" in caplog.text


def test_malformed_extraction_replies(shared_data, tmp_path, capsys, no_progress):
    """Bad JSON gets a repair turn; wrong schema / empty replies end as no_annotations; nothing crashes."""
    behaviour = {
        "11": ["{not json", None],  # bad JSON, then repaired
        "12": ['{"facts": ["AB = 5"]}', '{"facts": []}'],  # wrong schema twice
        "13": ["", ""],  # empty twice
        "14": ['```json\n{"annotations": ["L1 ∥ L2"]}\n```'],  # fenced JSON is fine
        "15": ['{"annotations": [3, "x"]}', '{"annotations": []}'],  # non-string item, then empty list
        "16": ['{"annotations": ["' + "x" * 200 + '", "EB ∥ DC"]}'],  # over-long item dropped
    }

    def reply(request: dict, facts: list[str]) -> str:
        pid = next(p for p, (_, f, _) in SCRIPT.items() if f == facts)
        attempt = sum(m["role"] == "assistant" for m in request["messages"])
        script = behaviour.get(pid, [None])
        text = script[min(attempt, len(script) - 1)]
        return json.dumps({"annotations": facts}, ensure_ascii=False) if text is None else text

    out = tmp_path / "out.jsonl"
    with OpenAITestServer(models=["vlm", "llm"], responder=Scripted(shared_data, reply)) as server:
        assert main(_args(shared_data, server, out, "--limit", "6", "--json", "--samples", "1")) == 0
        summary = json.loads(capsys.readouterr().out)
        repair = [r for r in server.requests if _is_extract(r) and len(r["messages"]) == 4]
    rows = {r["id"]: r for r in _read_jsonl(out)}
    assert rows["11"]["visual_annotations"] == EXPECTED_ANNOTATIONS["11"]
    assert rows["14"]["visual_annotations"] == ["L1 ∥ L2"]
    assert rows["16"]["visual_annotations"] == ["EB ∥ DC"]
    report = {r["id"]: r for r in _read_jsonl(tmp_path / "out.jsonl.report.jsonl")}
    assert report["12"]["status"] == "no_annotations" and "not an object" in report["12"]["detail"]
    assert report["13"]["status"] == "no_annotations" and "empty reply" in report["13"]["detail"]
    assert report["15"]["status"] == "no_annotations" and "no usable annotations" in report["15"]["detail"]
    # the repair turn quotes the bad reply and says what was wrong
    bad_json = next(r for r in repair if r["messages"][2]["content"] == "{not json")
    assert "not JSON" in bad_json["messages"][3]["content"]
    assert summary["stages"]["extract"]["invalid_replies"] == 1 + 2 + 2 + 2
    assert summary["status"] == {"skipped_input": 0, "ok": 3, "no_annotations": 3}


def test_empty_or_wrong_distillation_is_filtered(shared_data, tmp_path, no_progress):
    ids = _image_ids(shared_data)

    def responder(request: dict) -> str:
        if _is_extract(request):
            return json.dumps({"annotations": _facts_in(request)})
        pid = ids[hashlib.sha256(_image_bytes(request)[0]).hexdigest()]
        return {"11": "", "12": "no answer block, no box"}.get(pid, _trajectory(pid, correct=False))

    out = tmp_path / "out.jsonl"
    with OpenAITestServer(models=["vlm", "llm"], responder=responder) as server:
        assert main(_args(shared_data, server, out, "--limit", "3")) == 0
    assert _read_jsonl(out) == []
    report = _read_jsonl(tmp_path / "out.jsonl.report.jsonl")
    assert [r["status"] for r in report] == ["no_correct"] * 3


def test_endpoint_outage_fails_rows_and_a_rerun_completes_them(shared_data, tmp_path, capsys, no_progress):
    out = tmp_path / "out.jsonl"
    with OpenAITestServer(models=["vlm", "llm"], responder=Scripted(shared_data)) as server:
        server.fail_next(100, status=503)
        assert main(_args(shared_data, server, out, "--limit", "2", "--json")) == 1
        first = json.loads(capsys.readouterr().out)
        assert first["status"] == {"skipped_input": 0, "failed": 2}
        assert _read_jsonl(out) == []
        server.faults.clear()
        assert main(_args(shared_data, server, out, "--limit", "2", "--json")) == 0
    assert len(_read_jsonl(out)) == 2


def _request_key(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def test_killed_run_resumes_without_repeating_calls(shared_data, tmp_path):
    """A real process is SIGKILLed while its 9th call is in flight; the rerun repeats none of the 8 answered."""
    kill_at = 9
    holder: dict = {}
    scripted = Scripted(shared_data)
    answered: list[str] = []

    def responder(request: dict) -> str:
        if "proc" in holder and len(answered) + 1 == kill_at:
            os.kill(holder["proc"].pid, signal.SIGKILL)  # the process this test started
            holder.pop("proc")
            return "never delivered"
        text = scripted(request)
        answered.append(_request_key(request))
        return text

    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PERCEPTION_R1_NO_PROGRESS": "1"}
    with OpenAITestServer(models=["vlm", "llm"], responder=responder) as server:
        argv = [sys.executable, "-m", "perception_r1", *_args(shared_data, server, out, "--concurrency", "1")]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        holder["proc"] = proc
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL
        assert not out.exists()  # the final write is atomic: nothing half-written
        first_run = list(answered)
        assert len(first_run) == kill_at - 1
        with StageStore(Path(str(out) + ".store.sqlite")) as store:
            assert store.count() == kill_at - 1  # every answered call was committed before the kill
        done = server.request_count
        rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        second_run = [_request_key(r) for r in server.requests[done:]]
    assert not set(second_run) & set(first_run)
    assert len(first_run) + len(second_run) == 10 * 2 + 10  # exactly the calls of one uninterrupted run
    rows = _read_jsonl(out)
    assert [r["visual_annotations"] for r in rows] == [
        EXPECTED_ANNOTATIONS[str(p["id"])] for p in _problems(shared_data)
    ]


def test_missing_endpoint_is_a_clear_error(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PERCEPTION_R1_DISTILL_BASE_URL", raising=False)
    code = main(["annotate", "--input", str(shared_data / "geometry3k" / "problems.jsonl"), "--output", "x.jsonl"])
    assert code == 2
    assert "no distill endpoint" in capsys.readouterr().err


def test_parse_and_dedupe_units():
    assert prompts.parse_annotations('{"annotations": ["AB = 5", " ab=5. ", "CD ⊥ EF"]}', 8, 80) == [
        "AB = 5",
        "CD ⊥ EF",
    ]
    assert prompts.parse_annotations('{"annotations": ["a", "b", "c"]}', 2, 80) == ["a", "b"]
    for bad, message in [("", "empty"), ("[1]", "not an object"), ("{", "not JSON"), ('{"annotations": [""]}', "no")]:
        with pytest.raises(ValueError, match=message):
            prompts.parse_annotations(bad, 8, 80)
    text = prompts.render_template(
        "Q: {problem} \\boxed{{...}} {choices}", problem="\\frac{a}{b} {choices}", choices=""
    )
    assert text == "Q: \\frac{a}{b} {choices} \\boxed{...} "


def test_store_round_trip(tmp_path):
    path = tmp_path / "s.sqlite"
    with StageStore(path) as store:
        store.put("distill", "11#0", "fp", {"text": "hi"}, 3, 4)
    with StageStore(path) as store:
        got = store.get("distill", "11#0", "fp")
        assert got is not None and got.value == {"text": "hi"} and (got.prompt_tokens, got.completion_tokens) == (3, 4)
        assert store.get("distill", "11#0", "other") is None and store.count("extract") == 0
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database at all" * 100)
    with pytest.raises(ValueError, match="not a usable SQLite database"):
        StageStore(bad)


def test_invalid_stored_replies_are_asked_again_after_the_server_is_fixed(shared_data, tmp_path, capsys, no_progress):
    """A misconfigured server answers empty (or answerless) trajectories and unparseable extractions; after the fix,
    the rerun must ask again instead of reusing the stored bad replies forever."""
    ids = _image_ids(shared_data)

    def broken(request: dict) -> str:
        if _is_extract(request):
            return "{not json"
        pid = ids[hashlib.sha256(_image_bytes(request)[0]).hexdigest()]
        return "" if pid == "11" else "I cannot see an image."  # no final answer in either

    out = tmp_path / "out.jsonl"
    with OpenAITestServer(models=["vlm", "llm"], responder=broken) as server:
        assert main(_args(shared_data, server, out, "--limit", "2", "--json")) == 0
        first = json.loads(capsys.readouterr().out)
    assert first["status"] == {"skipped_input": 0, "no_correct": 2} and _read_jsonl(out) == []

    scripted = Scripted(shared_data)
    with OpenAITestServer(models=["vlm", "llm"], responder=scripted) as server:
        assert main(_args(shared_data, server, out, "--limit", "2", "--json")) == 0
        second = json.loads(capsys.readouterr().out)
    assert second["stages"]["distill"]["calls"] == 4 and second["stages"]["distill"]["cached"] == 0
    assert second["stages"]["distill"]["refreshed"] == 4  # stored, but invalid: asked again
    assert second["status"] == {"skipped_input": 0, "ok": 2}
    assert [r["visual_annotations"] for r in _read_jsonl(out)] == [
        EXPECTED_ANNOTATIONS["11"],
        EXPECTED_ANNOTATIONS["12"],
    ]

    # an unparseable extraction reply stored by a broken extractor is not reused either
    out2 = tmp_path / "out2.jsonl"
    store = ["--store", str(tmp_path / "shared.sqlite")]
    with OpenAITestServer(models=["vlm", "llm"], responder=Scripted(shared_data, lambda r, f: "{not json")) as server:
        assert main(_args(shared_data, server, out2, "--limit", "1", "--json", *store)) == 0
        assert json.loads(capsys.readouterr().out)["status"] == {"skipped_input": 0, "no_annotations": 1}
    with OpenAITestServer(models=["vlm", "llm"], responder=Scripted(shared_data)) as server:
        assert main(_args(shared_data, server, out2, "--limit", "1", "--json", *store)) == 0
        again = json.loads(capsys.readouterr().out)
    assert again["stages"]["distill"]["cached"] == 2 and again["stages"]["distill"]["calls"] == 0  # valid: reused
    assert again["stages"]["extract"]["calls"] == 1 and again["stages"]["extract"]["cached"] == 0
    assert again["status"] == {"skipped_input": 0, "ok": 1}


def test_refresh_asks_again_for_stored_valid_replies(shared_data, tmp_path, capsys, no_progress):
    """A wrong-model server gives readable but wrong answers (valid, so reused); --refresh re-asks them."""
    ids = _image_ids(shared_data)

    def wrong(request: dict) -> str:
        if _is_extract(request):
            return json.dumps({"annotations": _facts_in(request)})
        return _trajectory(ids[hashlib.sha256(_image_bytes(request)[0]).hexdigest()], correct=False)

    out = tmp_path / "out.jsonl"
    with OpenAITestServer(models=["vlm", "llm"], responder=wrong) as server:
        assert main(_args(shared_data, server, out, "--limit", "2", "--json")) == 0
        assert json.loads(capsys.readouterr().out)["status"] == {"skipped_input": 0, "no_correct": 2}
    with OpenAITestServer(models=["vlm", "llm"], responder=Scripted(shared_data)) as server:
        assert main(_args(shared_data, server, out, "--limit", "2", "--json")) == 0
        reused = json.loads(capsys.readouterr().out)
        assert reused["stages"]["distill"]["cached"] == 4 and server.request_count == 0
        assert main(_args(shared_data, server, out, "--limit", "2", "--json", "--refresh")) == 0
        refreshed = json.loads(capsys.readouterr().out)
        assert server.request_count == 4 + 2
    assert refreshed["stages"]["distill"]["calls"] == 4 and refreshed["stages"]["distill"]["refreshed"] == 4
    assert refreshed["status"] == {"skipped_input": 0, "ok": 2}
