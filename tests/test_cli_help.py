"""Discoverability: `score --help` lists the data_source values and `--set` keys with defaults, every `--help`
shows defaults, and `perception-r1 tasks` is generated from the registry (a task registered at runtime, with
documented settings, shows up with its defaults and meanings)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from perception_r1.cli import main as cli_main
from perception_r1.rewards import registry
from perception_r1.rewards.registry import Task, register_task, registered_tasks


def help_text(*args: str, columns: int | None = None) -> str:
    env = {**os.environ, "COLUMNS": str(columns)} if columns else None
    proc = subprocess.run(
        [sys.executable, "-m", "perception_r1", *args, "--help"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_score_help_reads_as_reviewed():
    """`score --help` is the command's manual: its usage, description and every option's help, word for word as
    reviewed in tests/fixtures/score_help.txt (the task list after it is checked below). After changing an option:
    ``COLUMNS=120 python -m perception_r1 score --help | sed '/^data_source values/,$d' > tests/fixtures/score_help.txt``
    and read the diff."""
    text = help_text("score", columns=120)
    reviewed = (Path(__file__).parent / "fixtures" / "score_help.txt").read_text(encoding="utf-8")
    assert text[: len(reviewed)] == reviewed
    assert text[len(reviewed) :].startswith("data_source values and their --set keys")
    assert re.search(r"\n +score +score a rollout JSONL file \(resumable\)\n", help_text())  # the command list


def test_score_help_lists_data_sources_and_setting_defaults():
    text = " ".join(help_text("score").split())
    for name, task in registered_tasks().items():
        assert f"{name}:" in text
        for f in dataclasses.fields(task.settings):
            default = json.dumps(f.default) if f.default is None or isinstance(f.default, bool) else str(f.default)
            assert f"{f.name}={default}" in text, f.name
    assert "perception-r1 tasks" in text
    assert "(default: 0.5)" in text  # --max-judge-failure-rate


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("annotate",), [r"--samples SAMPLES\s+trajectories per problem \(k\) \(default: 4\)",
                         r"distillation temperature \(default: 0.7\)", r"distillation max_tokens \(default: 4096\)"]),
        (("eval", "run"), [r"sampling temperature \(0: greedy\) \(default: 0.0\)", r"\(default: 4096\)",
                           r"GPUs per model replica \(default: 1\)"]),
        (("data", "geo3k"), [r"--min-pixels MIN_PIXELS\s+per-image Qwen resize lower bound \(0: unset\)\s+\(default:"]),
        (("judge", "calibrate"), [r"--min-agreement MIN_AGREEMENT\s+\(default: 0.9\)"]),
    ],
)  # fmt: skip
def test_help_shows_defaults(command, expected):
    text = help_text(*command)
    for pattern in expected:
        assert re.search(pattern, text), (pattern, text)


@dataclass(frozen=True)
class _PluginSettings:
    """Run settings of a test plugin. ``gain``: how much the score is scaled."""

    gain: float = 2.5
    offset: int = 3  # added after scaling
    # the answer must be shouted
    shout: bool = False
    label: str = dataclasses.field(default="x", metadata={"help": "what the plugin calls its answer"})
    tolerance: float = 0.25
    """How far off still counts."""


@pytest.fixture
def plugin_task():
    task = Task(
        data_source="test_plugin_task",
        settings=_PluginSettings,
        validate=lambda gt, extra: None,
        rule_components=lambda response, gt, extra, s: {"exact": 1.0},
        combine=lambda c, s: c["exact"],
        output_keys=("exact",),
    )
    register_task(task)
    try:
        yield task
    finally:
        registry._TASKS.pop("test_plugin_task", None)


def test_tasks_command_is_generated_from_the_registry(plugin_task, capsys):
    assert cli_main(["tasks"]) == 0
    text = capsys.readouterr().out
    block = text[text.index("test_plugin_task") :].split("\n\n")[0]
    assert "components: score, exact" in block
    assert re.search(r"gain = 2.5\s+\[float\] how much the score is scaled", block)
    assert re.search(r"offset = 3\s+\[int\] added after scaling", block)
    assert re.search(r"shout = false\s+\[bool\] the answer must be shouted", block)
    assert re.search(r"label = x\s+\[str\] what the plugin calls its answer", block)
    assert re.search(r"tolerance = 0.25\s+\[float\] How far off still counts", block)
    # the built-in tasks, with their documented settings
    assert re.search(r"math_timeout_s = 5.0\s+\[float\] math-verify's own parse/verify timeout", text)
    assert re.search(r"coord_frame = null\s+\[qwen2_vl\|qwen2_5_vl\|qwen3_vl\|absolute \| null\] the frame", text)

    assert cli_main(["tasks", "--json"]) == 0
    listed = {t["data_source"]: t for t in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(registered_tasks())
    assert listed["test_plugin_task"]["settings"][0] == {
        "name": "gain",
        "type": "float",
        "default": 2.5,
        "help": "how much the score is scaled",
    }
    assert listed["geo3k_visual"]["judge"] is True and listed["refcoco"]["judge"] is False
