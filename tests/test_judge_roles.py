"""Errors name the endpoint's role and URL (issue 11.3): the distiller and extractor of ``annotate`` (which checks
``GET /models`` before any paid call, like ``score`` and ``eval run``) and the policy server of ``eval run``."""

from __future__ import annotations

import pytest

from perception_r1.cli import main
from perception_r1.testing import OpenAITestServer


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("PERCEPTION_R1_NO_PROGRESS", "1")
    for name in ("DISTILL", "EXTRACT"):
        for suffix in ("BASE_URL", "MODEL", "API_KEY"):
            monkeypatch.delenv(f"PERCEPTION_R1_{name}_{suffix}", raising=False)


def _annotate(shared_data, tmp_path, *endpoint_args: str) -> list[str]:
    problems = shared_data / "geometry3k" / "problems.jsonl"
    return [
        "annotate",
        "--input",
        str(problems),
        "--output",
        str(tmp_path / "out.jsonl"),
        "--limit",
        "1",
        *endpoint_args,
    ]


def test_annotate_checks_the_distiller_first(shared_data, tmp_path, capsys):
    with OpenAITestServer(models=["other"]) as server:
        code = main(_annotate(shared_data, tmp_path, "--distill-base-url", server.base_url, "--distill-model", "vlm"))
        assert server.request_count == 0  # no paid call was made
    err = capsys.readouterr().err
    assert code == 2
    assert f"distiller at {server.base_url} serves ['other'], not the configured model 'vlm'" in err
    assert not (tmp_path / "out.jsonl.store.sqlite").exists()


def test_annotate_checks_a_separate_extractor(shared_data, tmp_path, capsys):
    with OpenAITestServer(models=["vlm"]) as vlm, OpenAITestServer(models=["vlm"], api_key="right") as llm:
        code = main(
            _annotate(
                shared_data,
                tmp_path,
                "--distill-base-url",
                vlm.base_url,
                "--distill-model",
                "vlm",
                "--extract-base-url",
                llm.base_url,
                "--extract-model",
                "llm",
                "--extract-api-key",
                "wrong",
            )
        )
        assert vlm.request_count == llm.request_count == 0
    err = capsys.readouterr().err
    assert code == 2 and f"extractor at {llm.base_url} rejected the API key (HTTP 401: unauthorized)" in err
    assert "wrong" not in err


def test_eval_run_names_the_policy_server(shared_data, tmp_path, capsys):
    with OpenAITestServer(models=["ckpt-a"]) as server:
        code = main(
            [
                "eval",
                "run",
                "--benchmark",
                "wemath",
                "--data",
                str(shared_data / "wemath"),
                "--output",
                str(tmp_path / "responses.jsonl"),
                "--base-url",
                server.base_url,
                "--model",
                "ckpt-b",
            ]
        )
    err = capsys.readouterr().err
    assert code == 2 and f"policy at {server.base_url} serves ['ckpt-a'], not the configured model 'ckpt-b'" in err
