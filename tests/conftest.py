"""Shared fixtures: the real shared data, and a local OpenAI-compatible server with scripted answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from perception_r1.testing import OpenAITestServer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PERCEPTION_R1_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()

os.environ.setdefault("PERCEPTION_R1_NO_PROGRESS", "0")

_MISSING_DEPENDENCY = "could not import"  # the reason pytest.importorskip gives


def _fail_import_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Every test dependency is required (the ``verl`` and ``test`` extras): a broken install must go red.

    ``pytest.importorskip`` would turn it into a green skip; this turns that skip into a failure naming the module.
    """
    if report.skipped and _MISSING_DEPENDENCY in str(report.longrepr):
        report.outcome = "failed"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _fail_import_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    _fail_import_skip(outcome.get_result())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real Geometry3K, COCO, OCR, MathVista, MATH-V, We-Math samples)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set PERCEPTION_R1_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def judge_server():
    """A scripted judge (annotation stated iff its text is in the response) on a real local socket."""
    with OpenAITestServer(models=["judge"], api_key="test-secret-key") as server:
        yield server
