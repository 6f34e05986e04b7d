"""Promises of the verl adapter (``PerceptionRewardManager``) that mutation testing found unguarded, checked in
process (no Ray): a trajectory that cannot be scored gets score 0 and ``scoring_error = 1`` instead of raising
out of ``run_single``; the process-wide scorer cache keys on the settings; every ``reward_extra_info`` has the
same keys; the judge budget is split over reward workers. The manager, ``DataProto`` and the tokenizer are verl's
and transformers' real classes (the real Qwen2.5-VL vocabulary)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from perception_r1.judge.client import JudgeSettings
from perception_r1.testing import OpenAITestServer
from perception_r1.testing.openai_server import parse_judge_request
from perception_r1.testing.qwen_processor import save_qwen2_5_vl_processor
from perception_r1.verl_plugin import reward_manager as rm
from perception_r1.verl_plugin.metrics import JUDGE_LATENCY, JUDGE_USAGE, SCORING_ERROR

GOOD = "<think>\nAB = 12 and angle C = 30, so x = 6.\n</think>\n<answer>\n\\boxed{6}\n</answer>"
FACTS = ["AB = 12", "angle C = 30", "BC = 99"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(save_qwen2_5_vl_processor(tmp_path_factory.mktemp("qwen"))))


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch):
    for name in ("VLLM_SERVER_BASE_URL", "VLLM_SERVER_API_KEY", "VLLM_MODEL_NAME", "JUDGE_MAX_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(rm, "_scorers", {})
    monkeypatch.setattr(rm, "_budget_logged", set())
    yield
    for scorer in rm._scorers.values():
        scorer.close()


def config(**reward_kwargs) -> object:
    return OmegaConf.create(
        {
            "reward": {"num_workers": 1, "reward_kwargs": {"isolation_workers": 1, **reward_kwargs}},
            "data": {"train_batch_size": 2},
            "actor_rollout_ref": {"rollout": {"n": 2}},
        }
    )


def trajectory(
    tokenizer, response: str, data_source: str = "geo3k_visual", extra_info=None, ground_truth="6", pad_id=None
):
    """One finished trajectory as verl's agent loop hands it to ``run_single`` (right-padded response)."""
    from verl import DataProto

    prompt = tokenizer.encode("Find x.")
    ids = tokenizer.encode(response) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    pad = 3
    pad_id = (tokenizer.pad_token_id or 0) if pad_id is None else pad_id
    responses = torch.tensor([ids + [pad_id] * pad])
    prompts = torch.tensor([prompt])
    mask = torch.tensor([[1] * (len(prompt) + len(ids)) + [0] * pad])

    def obj(value):
        array = np.empty(1, dtype=object)
        array[0] = value
        return array

    return DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "attention_mask": mask,
            "input_ids": torch.cat([prompts, responses], 1),
        },
        non_tensors={
            "data_source": obj(data_source),
            "reward_model": obj({"ground_truth": ground_truth}),
            "extra_info": obj(extra_info if extra_info is not None else {"visual_annotations": []}),
        },
    )


def run(manager, data):
    async def go():
        try:
            return await manager.run_single(data)
        finally:
            await manager.scorer.aclose()

    return asyncio.run(go())


def test_a_scored_trajectory_fills_every_key(tokenizer):
    manager = rm.PerceptionRewardManager(config(), tokenizer)
    out = run(manager, trajectory(tokenizer, GOOD))
    info = out["reward_extra_info"]
    assert list(info) == list(rm.extra_info_keys()) and info[SCORING_ERROR] == 0
    assert out["reward_score"] == info["score"] > 0 and info["accuracy"] == 1.0 and info["format"] == 1.0
    assert info["visual"] is None and info[JUDGE_LATENCY] is None  # no annotations: no judge
    assert info["iou"] is None  # a key another task has is present and None
    usage = json.loads(info[JUDGE_USAGE])
    assert usage["requests"] == 0 and usage["done_at"] >= usage["started_at"]


@pytest.mark.parametrize(
    "data_source, ground_truth",
    [("no_such_task", "6"), ("geo3k_visual", None)],  # an unknown task; ground truth the task rejects
)
def test_an_unscorable_trajectory_scores_zero_with_scoring_error(tokenizer, caplog, data_source, ground_truth):
    manager = rm.PerceptionRewardManager(config(), tokenizer)
    out = run(manager, trajectory(tokenizer, GOOD, data_source=data_source, ground_truth=ground_truth))
    info = out["reward_extra_info"]
    assert out["reward_score"] == 0.0 and info["score"] == 0.0 and info[SCORING_ERROR] == 1
    assert list(info) == list(rm.extra_info_keys()) and info["accuracy"] is None
    assert json.loads(info[JUDGE_USAGE])["requests"] == 0
    assert manager.scoring_errors == 1 and "could not score a trajectory (1 so far)" in caplog.text


def test_list_valued_extra_info_is_treated_as_empty(tokenizer):
    manager = rm.PerceptionRewardManager(config(), tokenizer)
    out = run(manager, trajectory(tokenizer, GOOD, extra_info=["not", "a", "dict"]))
    assert out["reward_extra_info"][SCORING_ERROR] == 0 and out["reward_extra_info"]["accuracy"] == 1.0


def test_only_the_valid_response_tokens_are_decoded(tokenizer):
    manager = rm.PerceptionRewardManager(config(), tokenizer)
    _, fields = manager._inputs(trajectory(tokenizer, GOOD))
    ids, _ = manager._inputs(trajectory(tokenizer, GOOD))
    assert tokenizer.decode(ids, skip_special_tokens=True) == GOOD
    assert fields == {"data_source": "geo3k_visual", "ground_truth": "6", "extra_info": {"visual_annotations": []}}


def test_the_attention_mask_decides_where_the_response_ends(tokenizer):
    manager = rm.PerceptionRewardManager(config(), tokenizer)
    visible_pad = tokenizer.encode("zzz")[0]  # a pad id that decoding would not drop on its own
    ids, _ = manager._inputs(trajectory(tokenizer, GOOD, pad_id=visible_pad))
    assert tokenizer.decode(ids, skip_special_tokens=True) == GOOD


def test_the_last_sequence_of_a_multi_sequence_trajectory_is_scored(tokenizer):
    from verl import DataProto

    manager = rm.PerceptionRewardManager(config(), tokenizer)
    first = trajectory(tokenizer, GOOD.replace("{6}", "{7}"))
    last = trajectory(tokenizer, GOOD)
    width = max(first.batch["responses"].shape[1], last.batch["responses"].shape[1])

    def widen(data):
        pad = width - data.batch["responses"].shape[1]
        tensors = {
            "prompts": data.batch["prompts"],
            "responses": torch.nn.functional.pad(data.batch["responses"], (0, pad), value=tokenizer.pad_token_id),
            "attention_mask": torch.nn.functional.pad(data.batch["attention_mask"], (0, pad)),
        }
        tensors["input_ids"] = torch.cat([tensors["prompts"], tensors["responses"]], 1)
        return DataProto.from_dict(tensors=tensors, non_tensors=dict(data.non_tensor_batch))

    both = DataProto.concat([widen(first), widen(last)])
    assert run(manager, both)["reward_extra_info"]["accuracy"] == 1.0
    assert run(manager, DataProto.concat([widen(last), widen(first)]))["reward_extra_info"]["accuracy"] == 0.0


def test_an_annotated_row_is_judged_and_settings_reach_the_score(tokenizer, monkeypatch):
    with OpenAITestServer(models=["judge"]) as server:
        monkeypatch.setenv("VLLM_SERVER_BASE_URL", server.base_url)
        monkeypatch.setenv("VLLM_MODEL_NAME", "judge")
        data = trajectory(tokenizer, GOOD, extra_info={"visual_annotations": FACTS})
        plain = run(rm.PerceptionRewardManager(config(judge_canaries_per_step=0), tokenizer), data)
        heavy = run(rm.PerceptionRewardManager(config(judge_canaries_per_step=0, visual_weight=5.0), tokenizer), data)
    for out in (plain, heavy):
        info = out["reward_extra_info"]
        assert info["visual"] == pytest.approx(2 / 3) and info["judge_failed"] == 0 and info[JUDGE_LATENCY] > 0
        assert json.loads(info[JUDGE_USAGE])["requests"] == 1
    # the scorer cache keys on the settings: the second manager scores with its own visual weight
    from perception_r1.rewards.registry import get_task
    from perception_r1.scoring import RewardScorer

    default = RewardScorer().settings_for(get_task("geo3k_visual")).visual_weight
    assert default != 5.0
    assert heavy["reward_score"] - plain["reward_score"] == pytest.approx((5.0 - default) * 2 / 3)


def test_the_scorer_cache_keys_on_settings_workers_and_judge():
    judge = JudgeSettings(base_urls=("http://127.0.0.1:9/v1",))
    a = rm.get_scorer({"visual_weight": 0.7}, 1, None)
    assert rm.get_scorer({"visual_weight": 0.7}, 1, None) is a
    assert rm.get_scorer({"visual_weight": 0.8}, 1, None) is not a
    assert rm.get_scorer({}, 1, None) is not a
    assert rm.get_scorer({"visual_weight": 0.7}, 2, None) is not a
    with_judge = rm.get_scorer({"visual_weight": 0.7}, 1, judge)
    assert with_judge is not a and with_judge.judge is not None and a.judge is None
    assert rm.get_scorer({"visual_weight": 0.7}, 1, judge) is with_judge
    assert a.overrides == {"visual_weight": 0.7} and a._workers == 1


def test_a_manager_without_a_judge_warns_once(tokenizer, caplog):
    rm.get_scorer({}, 1, None)
    rm.get_scorer({}, 1, None)
    assert caplog.messages == [
        "VLLM_SERVER_BASE_URL is not set in this reward worker: rows with visual annotations get "
        "visual = 0, judge_failed = 1"
    ]


def test_isolation_workers_default_to_the_cpu_share(monkeypatch, tokenizer):
    monkeypatch.setattr(rm.os, "cpu_count", lambda: 16)
    cfg = OmegaConf.create({"reward": {"num_workers": 4}})
    assert rm._default_isolation_workers(cfg) == 4
    assert rm._default_isolation_workers(OmegaConf.create({"reward": {"num_workers": 1}})) == 8  # at most 8
    assert rm._default_isolation_workers(OmegaConf.create({})) == 8  # no reward section: one worker
    manager = rm.PerceptionRewardManager(OmegaConf.create({"reward": {"num_workers": 4}}), tokenizer)
    assert manager.isolation_workers == 4  # this worker's share of the CPUs
    assert rm.PerceptionRewardManager(config(isolation_workers=3), tokenizer).isolation_workers == 3  # as set
    monkeypatch.setattr(rm.os, "cpu_count", lambda: None)
    assert rm._default_isolation_workers(cfg) == 1
    manager = rm.PerceptionRewardManager(OmegaConf.create({"reward": {"num_workers": 4}}), tokenizer)
    assert manager.isolation_workers == 1


def test_the_manager_keeps_what_verls_reward_loop_hands_it(tokenizer):
    config_ = config()
    score_fn, tok = (lambda **kw: 0.0), object()
    manager = rm.PerceptionRewardManager(config_, tokenizer, score_fn, "10.0.0.1:8000", tok)
    assert manager.config is config_ and manager.tokenizer is tokenizer and manager.compute_score is score_fn
    assert manager.reward_router_address == "10.0.0.1:8000" and manager.reward_model_tokenizer is tok


def test_the_manager_takes_its_share_of_the_judge_budget(tokenizer, monkeypatch):
    monkeypatch.setenv("VLLM_SERVER_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("JUDGE_MAX_CONCURRENCY", "8")
    cfg = config()
    cfg.reward.num_workers = 2
    assert rm.PerceptionRewardManager(cfg, tokenizer).judge_settings.max_concurrency == 4


def test_canaries_default_to_verls_batch_of_128_when_the_config_has_none(tokenizer, monkeypatch):
    monkeypatch.setenv("VLLM_SERVER_BASE_URL", "http://127.0.0.1:9")
    cfg = OmegaConf.create({"reward": {"num_workers": 1, "reward_kwargs": {"judge_canaries_per_step": 16}}})
    assert rm.PerceptionRewardManager(cfg, tokenizer).canaries.rate == 16 / 128


def test_the_run_wide_judge_budget_is_split_over_reward_workers(capsys):
    settings = JudgeSettings(base_urls=("http://a/v1",), max_concurrency=5, timeout_s=30, connect_timeout_s=2)
    share = rm.worker_judge_settings(settings, OmegaConf.create({"reward": {"num_workers": 2}}), None)
    assert share.max_concurrency == 2 and share.timeout_s == 30  # the floor when the index is unknown
    err = capsys.readouterr().err
    assert "JUDGE_MAX_CONCURRENCY=5 requests in flight for the run" in err and "reward.num_workers=2" in err
    assert "this worker (index unknown): 2; timeouts: connect 2 s, total 30 s" in err
    rm.worker_judge_settings(settings, OmegaConf.create({"reward": {"num_workers": 2}}), None)
    assert capsys.readouterr().err == ""  # logged once per budget
    assert rm.worker_judge_settings(None, OmegaConf.create({}), None) is None


def test_each_worker_logs_and_takes_its_own_share_of_the_budget(capsys):
    settings = JudgeSettings(base_urls=("http://a/v1",), max_concurrency=5)
    two = OmegaConf.create({"reward": {"num_workers": 2}})
    assert rm.worker_judge_settings(settings, two, 0).max_concurrency == 3  # 5 over 2 workers: 3 + 2
    assert rm.worker_judge_settings(settings, two, 1).max_concurrency == 2
    err = capsys.readouterr().err
    assert "this worker (index 0): 3;" in err and "this worker (index 1): 2;" in err
    rm.worker_judge_settings(settings.with_(max_concurrency=7), two, 0)  # another budget: logged again
    assert "JUDGE_MAX_CONCURRENCY=7" in capsys.readouterr().err


def test_budget_line_states_the_split_and_an_over_budget_warning():
    assert rm.budget_line(5, 2) == (
        "judge concurrency: JUDGE_MAX_CONCURRENCY=5 requests in flight for the run, split over "
        "reward.num_workers=2 reward workers: 2/3 each"
    )
    line = rm.budget_line(2, 3, share=1, index=0)
    assert line.endswith(
        "1 each (more workers than the budget: 3 in flight at most; raise JUDGE_MAX_CONCURRENCY); "
        "this worker (index 0): 1"
    )
    assert "budget" not in rm.budget_line(3, 3)


def test_config_int_reads_nested_values_or_the_default():
    cfg = OmegaConf.create({"data": {"train_batch_size": 7}, "reward": {"num_workers": "3"}})
    assert rm._config_int(cfg, "data.train_batch_size", 1) == 7
    assert rm._config_int(cfg, "reward.num_workers", 1) == 3
    assert rm._config_int(cfg, "data.missing", 9) == 9 and rm._config_int({}, "a.b", 4) == 4
    assert rm._config_int({"a": {"b": "x"}}, "a.b", 5) == 5
    from types import SimpleNamespace

    assert rm._config_int(SimpleNamespace(reward=SimpleNamespace(num_workers=6)), "reward.num_workers", 1) == 6
    assert rm._config_int({"reward": SimpleNamespace(num_workers="2")}, "reward.num_workers", 1) == 2


def test_reward_kwargs_from_config():
    assert rm.reward_kwargs_from_config(OmegaConf.create({"reward": {"reward_kwargs": {"a": "${b}"}}, "b": 2})) == {
        "a": 2
    }
    assert rm.reward_kwargs_from_config(OmegaConf.create({})) == {}
    assert rm.reward_kwargs_from_config({"reward": {"reward_kwargs": {"x": 1}}}) == {"x": 1}
    assert rm.reward_kwargs_from_config(None) == {}
    assert rm.reward_kwargs_from_config({"reward": "not a section"}) == {}
    nested = rm.reward_kwargs_from_config(OmegaConf.create({"reward": {"reward_kwargs": {"a": {"b": [1]}}}}))
    assert nested == {"a": {"b": [1]}} and type(nested["a"]) is dict and type(nested["a"]["b"]) is list  # plain


def test_plain_turns_parquet_values_into_json_values():
    value = {"a": np.array([np.int64(1), np.float32(0.5)]), 3: (np.str_("x"), [np.bool_(True)])}
    assert rm._plain(value) == {"a": [1, 0.5], "3": ["x", [True]]}
    assert type(rm._plain(np.int64(2))) is int


def test_extra_info_keys_are_score_components_then_bookkeeping():
    keys = rm.extra_info_keys()
    assert keys[0] == "score" and keys[-3:] == (JUDGE_LATENCY, JUDGE_USAGE, SCORING_ERROR)
    assert list(keys[1:-3]) == sorted(keys[1:-3]) and "accuracy" in keys and "score" not in keys[1:]


def test_reward_worker_index_outside_ray_is_none():
    assert rm.reward_worker_index() is None


def test_the_worker_index_is_read_from_verls_reward_actor_name_only():
    """verl names its reward actors ``reward_loop_worker_<i>``; any other actor (or none) has no index (a wrong
    index would give the worker another worker's share of the judge budget)."""
    assert rm.worker_index_from_actor_name("reward_loop_worker_0") == 0
    assert rm.worker_index_from_actor_name("reward_loop_worker_12") == 12
    for other in (
        None,
        "",
        "reward_loop_worker_",
        "reward_loop_worker_1x",
        "my_reward_loop_worker_1",
        "REWARD_LOOP_WORKER_1",
    ):
        assert rm.worker_index_from_actor_name(other) is None, other


def test_canaries_ride_with_trajectories_and_are_tallied(tokenizer, monkeypatch):
    from perception_r1.judge.calibration import load_rows
    from perception_r1.testing.openai_server import labelled_judge

    rows = load_rows()
    truthful = labelled_judge({row.response: row.labels_for("paper") for row in rows})
    with OpenAITestServer(models=["judge"], responder=truthful) as server:
        monkeypatch.setenv("VLLM_SERVER_BASE_URL", server.base_url)
        monkeypatch.setenv("VLLM_MODEL_NAME", "judge")
        manager = rm.PerceptionRewardManager(config(judge_canaries_per_step=4), tokenizer)  # one per trajectory
        assert manager.canaries is not None and manager.canaries.rate == 1.0
        out = run(manager, trajectory(tokenizer, GOOD))
        bad = run(manager, trajectory(tokenizer, GOOD, data_source="no_such_task"))
    usage = json.loads(out["reward_extra_info"][JUDGE_USAGE])
    rows_, failed, pairs, agreed, _, _ = usage["canary"]
    assert (rows_, failed) == (1, 0) and pairs > 0 and agreed == pairs and usage["requests"] == 1
    bad_usage = json.loads(bad["reward_extra_info"][JUDGE_USAGE])
    assert bad["reward_extra_info"][SCORING_ERROR] == 1 and bad_usage["canary"][0] == 1  # still sent and counted
    judged = [record for record in server.log if parse_judge_request(record.body) is not None]
    assert len(judged) == 2 and all(record.constrained for record in judged)  # judged exactly as rewards are


def test_a_row_without_annotations_and_no_canary_due_costs_the_judge_nothing(tokenizer, monkeypatch):
    with OpenAITestServer(models=["judge"], version=None) as server:  # not even a structured-outputs probe
        monkeypatch.setenv("VLLM_SERVER_BASE_URL", server.base_url)
        monkeypatch.setenv("VLLM_MODEL_NAME", "judge")
        manager = rm.PerceptionRewardManager(config(judge_canaries_per_step=0), tokenizer)
        out = run(manager, trajectory(tokenizer, GOOD))
    assert out["reward_extra_info"][SCORING_ERROR] == 0 and server.request_count == 0


def test_a_bug_in_canary_judging_costs_no_row_and_counts_the_canaries_failed(tokenizer, monkeypatch, caplog):
    with OpenAITestServer(models=["judge"]) as server:
        monkeypatch.setenv("VLLM_SERVER_BASE_URL", server.base_url)
        monkeypatch.setenv("VLLM_MODEL_NAME", "judge")
        manager = rm.PerceptionRewardManager(config(judge_canaries_per_step=4), tokenizer)

        async def broken(*args, **kwargs):
            raise RuntimeError("tally bug")

        monkeypatch.setattr(rm, "run_canaries", broken)  # a bug inside canary judging, not a judge failure
        out = run(manager, trajectory(tokenizer, GOOD))
    info = out["reward_extra_info"]
    assert info[SCORING_ERROR] == 0 and out["reward_score"] == info["score"] > 0
    assert json.loads(info[JUDGE_USAGE])["canary"][:2] == [1, 1]  # one canary due, counted as failed
    assert "canary judging failed: RuntimeError: tally bug" in caplog.messages


def test_no_canaries_without_a_judge_or_when_turned_off(tokenizer, monkeypatch):
    assert rm.PerceptionRewardManager(config(), tokenizer).canaries is None
    monkeypatch.setenv("VLLM_SERVER_BASE_URL", "http://127.0.0.1:9")
    assert rm.PerceptionRewardManager(config(judge_canaries_per_step=0), tokenizer).canaries is None


def test_scoring_errors_are_logged_at_1_10_100_not_every_time(tokenizer, caplog):
    manager = rm.PerceptionRewardManager(config(), tokenizer)
    data = trajectory(tokenizer, GOOD, data_source="no_such_task")
    for _ in range(11):
        assert run(manager, data)["reward_extra_info"][SCORING_ERROR] == 1
    logged = [m for m in caplog.messages if m.startswith("could not score a trajectory")]
    assert manager.scoring_errors == 11 and [m.split("(")[1].split(" ")[0] for m in logged] == ["1", "10"]
    assert logged[0].startswith(
        "could not score a trajectory (1 so far): KeyError: \"unknown data_source 'no_such_task'"
    )


def test_isolation_workers_are_an_integer_share_of_the_cpus(monkeypatch):
    monkeypatch.setattr(rm.os, "cpu_count", lambda: 4)
    share = rm._default_isolation_workers(OmegaConf.create({"reward": {"num_workers": 2}}))
    assert share == 2 and type(share) is int
    assert rm._default_isolation_workers(OmegaConf.create({})) == 4  # unknown reward workers: one
    assert rm._default_isolation_workers(OmegaConf.create({"reward": {"num_workers": 1}})) == 4
    monkeypatch.setattr(rm.os, "cpu_count", lambda: None)
    assert rm._default_isolation_workers(OmegaConf.create({"reward": {"num_workers": 1}})) == 1


def test_config_int_reads_attributes_or_items():
    from types import SimpleNamespace

    assert rm._config_int(SimpleNamespace(reward=SimpleNamespace(num_workers=3)), "reward.num_workers", 1) == 3
    assert rm._config_int({"a": {"b": 2}}, "a.b", 9) == 2


def test_one_reward_worker_gets_the_whole_judge_budget(capsys):
    """``reward.num_workers=1``: no split, the single worker may use all of ``JUDGE_MAX_CONCURRENCY``."""
    settings = JudgeSettings(base_urls=("http://a/v1",), max_concurrency=5, timeout_s=30, connect_timeout_s=2)
    assert rm.worker_judge_settings(settings, OmegaConf.create({"reward": {"num_workers": 1}}), 0).max_concurrency == 5
    assert rm.worker_judge_settings(settings, OmegaConf.create({}), None).max_concurrency == 5  # verl's default here: 1


def test_canaries_come_from_the_configured_file_in_the_seeded_order(tokenizer, monkeypatch, tmp_path):
    """Outside a Ray actor the seed is 0: a rerun sends the same canaries in the same order."""
    from perception_r1.judge.calibration import load_rows, shipped_labels_path
    from perception_r1.judge.canary import CanaryMixer

    monkeypatch.setenv("VLLM_SERVER_BASE_URL", "http://127.0.0.1:9")
    subset = tmp_path / "canaries.jsonl"
    subset.write_text("\n".join(Path(shipped_labels_path()).read_text().splitlines()[:5]) + "\n")
    manager = rm.PerceptionRewardManager(config(judge_canaries_per_step=4, judge_canary_file=str(subset)), tokenizer)
    expected = CanaryMixer(load_rows(str(subset)), per_step=4, rows_per_step=4, seed=0).take_many(10)
    assert len(manager.canaries.rows) == 5 and manager.canaries.take_many(10) == expected
    shipped = rm.PerceptionRewardManager(config(judge_canaries_per_step=4), tokenizer)
    assert len(shipped.canaries.rows) == len(load_rows()) > 5
