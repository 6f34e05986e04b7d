"""The shared JSONL reader: line numbers, blank lines, error types and the ``path:line`` messages."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

import perception_r1.jsonl
from perception_r1.errors import CommandError
from perception_r1.jsonl import iter_jsonl


def _write(tmp_path: Path, text: str, name: str = "rows.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_yields_line_numbers_and_skips_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"a": 1}\n\n   \t\n{"a": 2}\r\n{"a": 3}')  # CRLF and no final newline too
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2}), (5, {"a": 3})]


def test_line_separator_inside_a_string_does_not_split_the_row(tmp_path: Path) -> None:
    # JSON allows U+2028 and U+0085 raw in strings (str.splitlines would cut there); only a newline ends a row
    path = _write(tmp_path, '{"text": "a\u2028b\x85c"}\n{"n": 2}\n')
    assert list(iter_jsonl(path)) == [(1, {"text": "a\u2028b\x85c"}), (2, {"n": 2})]


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"a": 1}\n\n{not json\n')
    with pytest.raises(ValueError, match=r"^.*rows\.jsonl:3: invalid JSON \(Expecting property name") as info:
        list(iter_jsonl(path))
    assert str(info.value).startswith(f"{path}:3: ")


def test_non_object_row_is_rejected_by_default(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"a": 1}\n["a list"]\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:2: expected a JSON object, got list$"):
        list(iter_jsonl(path))


def test_non_object_rows_pass_through_when_not_required(tmp_path: Path) -> None:
    path = _write(tmp_path, '["a list"]\n3\nnull\n')
    assert list(iter_jsonl(path, require_object=False)) == [(1, ["a list"]), (2, 3), (3, None)]


def test_caller_error_type_and_display_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "[1]\n")
    with pytest.raises(CommandError) as info:
        list(iter_jsonl(path, CommandError, name="rows.jsonl"))
    assert str(info.value) == "rows.jsonl:1: expected a JSON object, got list"
    assert info.value.code == 2


def test_unreadable_file_raises_the_callers_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(CommandError, match=r"^cannot read .*missing\.jsonl: No such file or directory$"):
        list(iter_jsonl(missing, CommandError))


def test_on_invalid_yield_reports_bad_lines_and_goes_on(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"a": 1}\n{broken\n[2]\n{"a": 3}\n')
    rows = list(iter_jsonl(path, require_object=False, on_invalid="yield"))
    assert [number for number, _ in rows] == [1, 2, 3, 4]
    assert isinstance(rows[1][1], json.JSONDecodeError)
    assert rows[1][1].msg.startswith("Expecting property name")
    assert rows[2][1] == [2] and rows[3][1] == {"a": 3}


def test_docstring_example_runs() -> None:
    result = doctest.testmod(perception_r1.jsonl)
    assert result.attempted > 0 and result.failed == 0
