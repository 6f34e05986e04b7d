"""Answer extraction and official scoring on the real MathVista, MATH-Vision and We-Math items in shared data."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from perception_r1.eval.answers import extract_rule, extraction_report, final_span, parse_number
from perception_r1.eval.benchmarks import LETTERS, BenchmarkFormatError, BenchmarkItem, load_benchmark
from perception_r1.eval.reasoning_scoring import is_correct, score_predictions, summarize, wemath_metrics
from perception_r1.judge.client import JudgeClient, JudgeSettings
from perception_r1.testing import OpenAITestServer


@pytest.fixture(scope="module")
def mathvista(shared_data: Path) -> list[BenchmarkItem]:
    return load_benchmark("mathvista", shared_data / "mathvista", require_images=False)


@pytest.fixture(scope="module")
def mathvision(shared_data: Path) -> list[BenchmarkItem]:
    return load_benchmark("mathvision", shared_data / "mathv")


@pytest.fixture(scope="module")
def wemath(shared_data: Path) -> list[BenchmarkItem]:
    return load_benchmark("wemath", shared_data / "wemath")


def score(item: BenchmarkItem, response: str) -> int:
    return int(is_correct(item, extract_rule(item, response).answer))


def wrong_letter(item: BenchmarkItem) -> str:
    """An option whose text differs from the gold one and does not itself look like a letter."""
    gold_text = item.choices[LETTERS.index(item.answer)]
    for letter, text in zip(item.letters, item.choices, strict=True):
        if text != gold_text and not _letter_like(text):
            return letter
    for letter, text in zip(item.letters, item.choices, strict=True):
        if text != gold_text and text.strip("() ").upper() == letter:
            return letter
    raise AssertionError(f"no distinct wrong option for {item.id}")


def _letter_like(text: str) -> bool:
    core = text.strip("() ")
    return len(core) == 1 and core.isalpha()


def choice_variants(item: BenchmarkItem) -> tuple[list[str], list[str]]:
    letter = item.answer
    text = item.choices[LETTERS.index(letter)]
    right = [
        f"<think>\nreasoning\n</think>\n<answer>\n\\boxed{{{letter}}}\n</answer>",  # boxed letter
        f"So the correct option is ({letter}).",  # phrase, parenthesised letter
        f"Answer: {letter}. {text}",  # letter with its text
        letter,  # bare letter
    ]
    ambiguous_text = sum(1 for c in item.choices if c.strip() == text.strip()) > 1
    letter_like = any(_letter_like(c) for c in item.choices)
    if not letter_like or ambiguous_text:
        right.append(f"\\boxed{{{text}}}")  # option text, boxed
        right.append(f"The answer is {text}.")  # option text, plain
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text)
    value = parse_number(text)
    unique_value = value is not None and sum(1 for c in item.choices if parse_number(c) == value) == 1
    if unique_value and not letter_like and len(numbers) == 1 and "\\" not in text:
        right.append(f"The answer is {numbers[0]}")  # the number as the option writes it, units dropped
        right.append(f"\\boxed{{{numbers[0]}\\text{{ units}}}}")  # the number with another unit
    bad = wrong_letter(item)
    wrong = [f"The answer is {item.choices[LETTERS.index(bad)]}.", "\\boxed{Z}", ""]
    if not any(_letter_like(c) and c.strip("() ").upper() == bad for c in item.choices):
        wrong.append(f"\\boxed{{{bad}}}")  # unless an option's text is that very letter (MATH-V id 742)
    return right, wrong


def test_mathvista_every_item(mathvista: list[BenchmarkItem]) -> None:
    assert len(mathvista) == 1000
    checked = 0
    for item in mathvista:
        if item.answer_type == "choice":
            right, wrong = choice_variants(item)
        elif item.answer_type in ("integer", "float"):
            gold = item.answer
            unit = item.unit or "cm"
            right = [
                f"\\boxed{{{gold}}}",
                f"The answer is {gold}.",
                f"<answer>{gold} {unit}</answer>",
                f"\\boxed{{{gold}\\text{{ {unit}}}}}",
                f"x = {gold}",
            ]
            if item.answer_type == "float":
                right.append(f"\\boxed{{{float(gold):.{item.precision + 2}f}}}")  # rounds to the gold at its precision
            else:
                right.append(f"\\boxed{{{int(gold):,}}}")  # thousands separators
            wrong = [f"\\boxed{{{float(gold) + 1:g}}}", f"The answer is {float(gold) * 3 + 7:g}", "no idea"]
        else:  # list
            right = [f"\\boxed{{{item.answer}}}", f"The answer is {item.answer}"]
            wrong = ["\\boxed{[1, 2, 3]}"]
        for response in right:
            assert score(item, response) == 1, (item.id, response)
        for response in wrong:
            assert score(item, response) == 0, (item.id, response)
        checked += 1
    assert checked == 1000


def test_mathvision_every_item(mathvision: list[BenchmarkItem]) -> None:
    assert len(mathvision) == 304
    for item in mathvision:
        if item.answer_type == "choice":
            right, wrong = choice_variants(item)
        elif item.answer_type == "number":
            gold = item.answer
            right = [f"\\boxed{{{gold}}}", f"The answer is {gold}", f"\\boxed{{{gold} \\mathrm{{cm}}^2}}", f"{gold} cm"]
            wrong = [f"\\boxed{{{float(gold) + 1:g}}}", "The answer is unclear"]
        else:  # expression answers such as "(3,-4)"
            right = [f"\\boxed{{{item.answer}}}", f"The answer is {item.answer}"]
            wrong = ["\\boxed{(1,1)}" if item.answer != "(1,1)" else "\\boxed{(2,2)}"]
        for response in right:
            assert score(item, response) == 1, (item.id, response)
        for response in wrong:
            assert score(item, response) == 0, (item.id, response)


def test_wemath_every_item(wemath: list[BenchmarkItem]) -> None:
    assert len(wemath) == 40
    for item in wemath:
        right, wrong = choice_variants(item)
        right.append(f"<Thought process>: <<...>> <Answer>: <<{item.answer}>>")  # We-Math's own template
        for response in right:
            assert score(item, response) == 1, (item.id, response)
        for response in wrong:
            assert score(item, response) == 0, (item.id, response)


def test_units_and_precision_on_named_items(mathvista: list[BenchmarkItem], wemath: list[BenchmarkItem]) -> None:
    by_id = {i.id: i for i in mathvista}
    spring = by_id["1"]  # float, precision 1, gold 1.2
    assert spring.answer_type == "float" and spring.precision == 1
    assert score(spring, "\\boxed{1.2 \\mathrm{~m}}") == 1
    assert score(spring, "\\boxed{1.24}") == 1  # rounds to 1.2 at the item's precision
    assert score(spring, "\\boxed{1.26}") == 0
    cup = by_id["2"]  # integer with unit g, gold 1000
    assert score(cup, "The total volume is 1000 g, so the answer is 1,000 g.") == 1
    circle = {i.id: i for i in wemath}["2steps_5/2steps_1"]  # options "1 cm", "1.5 cm"…; gold A
    assert score(circle, "\\boxed{1\\text{ cm}}") == 1
    assert score(circle, "\\boxed{1.5 cm}") == 0


def test_final_span_paths() -> None:
    assert final_span("<answer>The result is \\boxed{7}</answer>") == ("7", "boxed")
    assert final_span("<answer>So it is 7</answer>") == ("So it is 7", "answer_tag")
    assert final_span("Therefore, the final answer is: 12 cm.\nThanks") == ("12 cm.", "answer_phrase")
    assert final_span("B") == ("B", "bare")
    assert final_span("a long explanation without any conclusion " * 3) == (None, "none")
    assert final_span("") == (None, "none")


def test_parse_number_cases() -> None:
    assert parse_number("\\frac{3}{4}") == 0.75
    assert parse_number("45^\\circ") == 45
    assert parse_number("x = 3.5 m^2") == 3.5
    assert parse_number("2\\sqrt{3}") == pytest.approx(3.4641016)
    assert parse_number("-4.3") == -4.3
    assert parse_number("2 and 3") is None  # ambiguous: left to the judge
    assert parse_number("") is None


def test_wemath_four_dimensional_metrics(wemath: list[BenchmarkItem]) -> None:
    """Construct outcomes group by group and check every count against the definitions."""
    groups: dict[str, list[BenchmarkItem]] = {}
    for item in wemath:
        groups.setdefault(item.meta["group"], []).append(item)
    assert len(groups) == 12
    # pattern per group: (sub-problems right?, composite right?)
    patterns = [("all", True), ("all", False), ("some", True), ("some", False), ("none", True), ("none", False)] * 2
    correct: dict[str, bool] = {}
    expected = dict.fromkeys(("IK", "IG", "CM_strict", "CM_loose", "RM_strict", "RM_loose"), 0)
    for (_group, rows), (subs, composite) in zip(sorted(groups.items()), patterns, strict=True):
        sub_rows = sorted((r for r in rows if r.meta["step"] != "multi"), key=lambda r: r.meta["step"])
        for index, row in enumerate(sub_rows):
            correct[row.id] = subs == "all" or (subs == "some" and index == 0)
        (multi,) = [r for r in rows if r.meta["step"] == "multi"]
        correct[multi.id] = composite
        if composite:
            expected["CM_strict" if subs == "all" else "RM_strict"] += 1
            expected["CM_loose" if subs != "none" else "RM_loose"] += 1
        else:
            expected["IG" if subs == "all" else "IK"] += 1
    metrics = wemath_metrics(wemath, correct)
    assert metrics["groups"] == 12 and metrics["incomplete_groups"] == 0
    assert metrics["counts"] == expected
    assert expected == {"IK": 4, "IG": 2, "CM_strict": 2, "CM_loose": 4, "RM_strict": 4, "RM_loose": 2}
    assert metrics["score_strict"] == pytest.approx((12 - 0.5 * 2 - 4 - 4) / 12)
    assert metrics["score_loose"] == pytest.approx((12 - 0.5 * 2 - 2 - 4) / 12)
    assert metrics["rates"]["RM_strict"] == pytest.approx(4 / 6)
    # a group missing its composite is left out, and said so
    partial = {k: v for k, v in correct.items() if k != "2steps_1/2steps_multi"}
    assert wemath_metrics(wemath, partial)["incomplete_groups"] == 1


def test_summarize_reports_paths_and_breakdowns(mathvista: list[BenchmarkItem]) -> None:
    items = mathvista[:6]
    responses = {i.id: f"\\boxed{{{i.answer}}}" for i in items[:3]}
    responses[items[3].id] = "I could not decide between the options here, sorry about that."
    from perception_r1.eval.answers import extract_rule as rule

    extractions = {k: rule({i.id: i for i in items}[k], v) for k, v in responses.items()}
    summary, correct = summarize("mathvista", items, extractions)
    assert summary["n"] == 6 and summary["answered"] == 4 and summary["missing"] == 2  # missing items are misses
    assert summary["extraction"]["rule"] == 3 and summary["extraction"]["none"] == 1
    assert sum(correct.values()) == summary["correct"]
    assert "question_type" in summary["breakdowns"] and "skills" in summary["breakdowns"]
    assert extraction_report([])["rule"] == 0


def test_judge_fallback_only_for_unreadable(wemath: list[BenchmarkItem]) -> None:
    """Readable answers never reach the judge; unreadable ones do, and the report counts each path."""
    items = wemath[:4]

    def judge_reply(request: dict) -> str:
        text = request["messages"][-1]["content"]
        return "C" if "third option" in text else "NONE"

    with OpenAITestServer(models=["judge"], responder=judge_reply) as server:
        client = JudgeClient(JudgeSettings(base_urls=(server.base_url,), model="judge", max_retries=0))
        predictions = {
            items[0].id: f"\\boxed{{{items[0].answer}}}",
            items[1].id: "Looking at the diagram, the third option is what I would go with in the end.",
            items[2].id: "Hmm, the figure is hard to read and I cannot decide what to do with it here.",
        }

        async def main() -> tuple[dict, list[dict]]:
            return await score_predictions(items, predictions)

        async def main_judged() -> tuple[dict, list[dict]]:
            try:
                return await score_predictions(items, predictions, client)
            finally:
                await client.aclose()

        plain, _ = asyncio.run(main())
        judged, rows = asyncio.run(main_judged())
        assert len(server.requests) == 2  # only the two unreadable responses
    assert plain["extraction"] == {"rule": 1, "judge": 0, "none": 2, "by_method": {"boxed": 1, "none": 2}}
    assert (
        judged["extraction"]["rule"] == 1 and judged["extraction"]["judge"] == 1 and judged["extraction"]["none"] == 1
    )
    by_id = {r["id"]: r for r in rows}
    assert by_id[items[1].id]["extracted"] == "C" and by_id[items[1].id]["method"] == "judge"
    assert by_id[items[1].id]["correct"] == (items[1].answer == "C")


def test_loader_errors_name_row_and_field(tmp_path: Path, shared_data: Path) -> None:
    rows = [json.loads(line) for line in (shared_data / "wemath" / "testmini_sample.jsonl").read_text().splitlines()]
    broken = dict(rows[0])
    del broken["answer"]
    path = tmp_path / "testmini.jsonl"
    path.write_text(json.dumps(rows[1]) + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"row 2 \(ID 2steps_1, key 2steps_1\): missing field 'answer'"):
        load_benchmark("wemath", path, image_root=shared_data / "wemath")
    bad_image = dict(rows[0], image="images/nope.png")
    path.write_text(json.dumps(bad_image) + "\n")
    with pytest.raises(BenchmarkFormatError, match="field 'image'.*not found"):
        load_benchmark("wemath", path, image_root=shared_data / "wemath")
    vista = tmp_path / "testmini.json"
    vista.write_text(json.dumps({"7": {"question": "q", "answer": "3", "question_type": "free_form"}}))
    with pytest.raises(BenchmarkFormatError, match=r"pid 7\): missing field 'answer_type'"):
        load_benchmark("mathvista", vista, require_images=False)
    with pytest.raises(BenchmarkFormatError, match="missing field 'image'"):
        load_benchmark("mathvista", shared_data / "mathvista", limit=1)


def test_hub_style_parquet_with_image_bytes(tmp_path: Path, shared_data: Path) -> None:
    """A hub parquet export (image as {bytes, path}) loads like the official JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (shared_data / "mathv" / "testmini.jsonl").read_text().splitlines()[:3]]
    table_rows = []
    for row in rows:
        data = (shared_data / "mathv" / row["image"]).read_bytes()
        table_rows.append({**row, "decoded_image": {"bytes": data, "path": row["image"]}, "image": row["image"]})
    pq.write_table(pa.Table.from_pylist(table_rows), tmp_path / "testmini-00000.parquet")
    items = load_benchmark("mathvision", tmp_path / "testmini-00000.parquet")
    assert [i.id for i in items] == [r["id"] for r in rows]
    assert items[0].images[0].data == (shared_data / "mathv" / rows[0]["image"]).read_bytes()
    assert items[0].images[0].mime() == "image/jpeg"
