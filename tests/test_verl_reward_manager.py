"""The reward manager inside verl's real reward loop: Ray CPU actors, the launcher's own config, a real judge socket.

One Ray session for the module: verl's ``RewardLoopManager`` starts 2 ``RewardLoopWorker`` actors that load
``PerceptionRewardManager`` from the config the geo3k launcher composes under DRY_RUN, tokenize with the real
Qwen2.5-VL vocabulary, and ask a local OpenAI-compatible judge. The same session proves the trainer
registration reaches Ray workers (the wrapper's setup hook) and that per-step metrics are read back from verl's
TransferQueue where the agent loop stores them.

The run's judge budget is ``JUDGE_MAX_CONCURRENCY=5`` over the 2 workers (3 + 2), and one canary per trajectory
is mixed into the judge's traffic; the judge answers the canaries' labels truthfully (``labelled_judge``) and every
other request as the substring judge.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from omegaconf import OmegaConf
from test_launcher_geo3k import JUDGE_KEY, JUDGE_MODEL, compose_geo3k, geo3k_rows, write_parquet

from perception_r1.judge.calibration import load_rows
from perception_r1.judge.client import JudgeClient, JudgeSettings
from perception_r1.judge.guard import JudgeBreaker, JudgeGuardSettings
from perception_r1.scoring import RewardScorer, ScoreRow
from perception_r1.testing import OpenAITestServer
from perception_r1.testing.openai_server import labelled_judge, substring_verdicts
from perception_r1.testing.qwen_processor import save_qwen2_5_vl_processor
from perception_r1.verl_plugin.metrics import judge_step, parse_judge_usage, reward_metrics
from perception_r1.verl_plugin.reward_manager import extra_info_keys

pytestmark = pytest.mark.slow  # a Ray session with verl reward-loop workers


def responses_for(rows: list[dict]) -> list[tuple[int, str]]:
    """(row index, response): good, wrong, garbage, empty, forged tags, degenerate loop, no annotations, repeats."""
    out = []
    for i, row in enumerate(rows[:8]):
        facts = row["extra_info"]["visual_annotations"]
        answer = row["reward_model"]["ground_truth"]
        if i == 0:
            text = f"<think>\nFrom the diagram: {facts[0]}. Also {facts[1]}.\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>"
        elif i == 1:
            text = "<think>\n" + "\n".join(facts) + "\n</think>\n<answer>\n\\boxed{12345}\n</answer>"
        elif i == 2:
            text = "asdf qwer \\boxed{"
        elif i == 3:
            text = ""
        elif i == 4:
            tags = "".join(f"<info{k}>1</info{k}>" for k in range(1, len(facts) + 1))
            text = f"<think>\n{tags} </info1> ===== end\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>"
        elif i == 5:
            text = "<think>\n" + "the angle is five degrees so " * 60 + "\n</think>\n<answer>\n\\boxed{5}\n</answer>"
        elif i == 6:
            row["extra_info"] = {"index": 6, "visual_annotations": []}  # no annotations: visual is None
            text = f"<think>\nx\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>"
        else:
            text = "<think>\n\\frac{\\frac{\\frac{1}{2}}{3}}{\n</think>\n<answer>\n\\boxed{\\sqrt{\\sqrt{\\sqrt{}}}}\n</answer>"
        out.append((i, text))
    return out + [out[0], out[1], out[0]]  # GRPO groups repeat answers


# responses_for's eight answers, read by hand: the template (<think>…</think><answer>…\boxed{…}…</answer>) holds
# for all but the garbage and the empty one; the boxed answer equals the ground truth in rows 0, 4 and 6.
FORMAT = [1, 1, 0, 0, 1, 1, 1, 1]
ACCURACY = [1, 0, 0, 0, 1, 0, 1, 0]


def repetition_penalty(text: str, n: int, max_penalty: float = -2.0) -> float:
    """The paper's n-gram penalty from its definition: (1 - unique/total) n-grams of lower-cased words."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return (1 - len(set(grams)) / len(grams)) * max_penalty if grams else 0.0


def expected_rows(rows: list[dict], items: list[tuple[int, str]], visual_weight: float, n: int) -> list[dict]:
    """``0.1·format + 0.9·accuracy + visual_weight·hits/#annotations + penalty``, the judge being the substring one."""
    out = []
    for i, text in items:
        facts = rows[i]["extra_info"]["visual_annotations"]
        visual = sum(substring_verdicts(facts, text)) / len(facts) if facts else None
        penalty = repetition_penalty(text, n)
        score = 0.1 * FORMAT[i] + 0.9 * ACCURACY[i] + visual_weight * (visual or 0.0) + penalty
        out.append({"score": score, "format": FORMAT[i], "accuracy": ACCURACY[i], "visual": visual, "ngram": penalty})
    return out


def build_batch(tokenizer, rows: list[dict], items: list[tuple[int, str]]):
    """A verl ``DataProto`` like the agent loop hands to the reward loop (left-padded prompts, right-padded responses)."""
    from verl import DataProto

    prompts = [tokenizer.encode(rows[i]["prompt"][0]["content"]) for i, _ in items]
    responses = [tokenizer.encode(text) + [tokenizer.convert_tokens_to_ids("<|im_end|>")] for _, text in items]
    p_len, r_len = max(map(len, prompts)), max(map(len, responses))
    pad = tokenizer.pad_token_id or 0
    prompt_ids = torch.full((len(items), p_len), pad, dtype=torch.long)
    response_ids = torch.full((len(items), r_len), pad, dtype=torch.long)
    mask = torch.zeros((len(items), p_len + r_len), dtype=torch.long)
    for j, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        prompt_ids[j, p_len - len(p) :] = torch.tensor(p)
        response_ids[j, : len(r)] = torch.tensor(r)
        mask[j, p_len - len(p) : p_len + len(r)] = 1
    obj = lambda values: np.array(values, dtype=object)  # noqa: E731
    return DataProto.from_dict(
        tensors={
            "prompts": prompt_ids,
            "responses": response_ids,
            "attention_mask": mask,
            "input_ids": torch.cat([prompt_ids, response_ids], dim=1),
        },
        non_tensors={
            "data_source": obj([rows[i]["data_source"] for i, _ in items]),
            "reward_model": obj([rows[i]["reward_model"] for i, _ in items]),
            "extra_info": obj([rows[i]["extra_info"] for i, _ in items]),
        },
    ), [len(r) for r in responses]


def expected_values(settings: dict, judge_url: str, rows: list[dict], items: list[tuple[int, str]]) -> list[dict]:
    """The same rows through the scoring engine directly (what ``perception-r1 score`` runs)."""
    judge = JudgeClient(JudgeSettings(base_urls=(judge_url,), model=JUDGE_MODEL, api_key=JUDGE_KEY))
    scorer = RewardScorer(settings, judge=judge, workers=1)

    async def go():
        try:
            return await scorer.score_many(
                ScoreRow(rows[i]["data_source"], text, rows[i]["reward_model"]["ground_truth"], rows[i]["extra_info"])
                for i, text in items
            )
        finally:
            await scorer.aclose()

    try:
        return [r.values for r in asyncio.run(go())]
    finally:
        scorer.close()


CANARY_ROWS = load_rows()
JUDGE_BUDGET = 5


@pytest.fixture(scope="module")
def judge():
    truthful = labelled_judge({row.response: row.labels_for("paper") for row in CANARY_ROWS})
    with OpenAITestServer(models=[JUDGE_MODEL], api_key=JUDGE_KEY, responder=truthful) as server:
        yield server


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, judge: OpenAITestServer):
    """Launcher DRY_RUN config + processor dir + one Ray session with the wrapper's runtime env."""
    tmp = tmp_path_factory.mktemp("verl_rm")
    rows = geo3k_rows(shared_data)
    write_parquet(tmp / "train.parquet", rows)
    _, cfg = compose_geo3k(
        tmp, judge.base_url, TRAIN_FILE=str(tmp / "train.parquet"), VAL_FILE=str(tmp / "train.parquet")
    )
    processor = save_qwen2_5_vl_processor(tmp / "qwen2_5_vl")
    cfg.actor_rollout_ref.model.path = str(processor)  # the worker needs a tokenizer; no weights are loaded
    cfg.reward.num_workers = 2
    # one canary per trajectory: as many canaries per step as trajectories in a step
    cfg.reward.reward_kwargs.judge_canaries_per_step = cfg.data.train_batch_size * cfg.actor_rollout_ref.rollout.n
    runtime_env = OmegaConf.to_container(cfg.ray_kwargs.ray_init.runtime_env)
    runtime_env = {k: v for k, v in runtime_env.items() if v is not None}
    runtime_env.setdefault("env_vars", {})["JUDGE_MAX_CONCURRENCY"] = str(JUDGE_BUDGET)  # the run's budget
    with pytest.MonkeyPatch.context() as mp:
        # like the launcher's shell: the key only in the environment Ray inherits, never in the config
        mp.setenv("VLLM_SERVER_API_KEY", JUDGE_KEY)
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        ray.init(num_cpus=2, include_dashboard=False, runtime_env=runtime_env, logging_level="ERROR")
        try:
            yield cfg, rows, processor
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def reward_loop(setup):
    from verl.experimental.reward_loop import RewardLoopManager

    cfg, _, _ = setup
    return RewardLoopManager(cfg)


def test_plumbing_reward_loop_scores_a_batch_like_the_scoring_engine(
    setup, reward_loop, judge: OpenAITestServer
) -> None:
    """Plumbing (verl's loop == the engine in-process) plus the scores derived from the reward's definition."""
    from transformers import AutoTokenizer

    cfg, rows, processor = setup
    assert len(reward_loop.reward_loop_workers) == 2
    tokenizer = AutoTokenizer.from_pretrained(processor)
    items = responses_for(rows)
    batch, response_lengths = build_batch(tokenizer, rows, items)
    requests_before = judge.request_count

    out = reward_loop.compute_rm_score(batch)

    keys = list(extra_info_keys())
    assert out.meta_info["reward_extra_keys"] == keys
    assert {"score", "format", "accuracy", "visual", "ngram_penalty", "judge_failed", "judge_latency_s"} <= set(keys)
    assert {"judge_truncated", "judge_usage"} <= set(keys)
    settings = {k: v for k, v in cfg.reward.reward_kwargs.items() if not k.startswith("judge_")}
    expected = expected_values(settings, judge.base_url, rows, items)  # no canaries: they never reach a score
    rm_scores = out.batch["rm_scores"]
    for j, want in enumerate(expected):
        got = {key: out.non_tensor_batch[key][j] for key in want}
        assert got == want, (j, items[j][1][:80])
        # the scalar sits on the last valid response token, nowhere else
        assert rm_scores[j, response_lengths[j] - 1].item() == pytest.approx(want["score"])
        assert rm_scores[j].sum().item() == pytest.approx(want["score"])
        assert out.non_tensor_batch["scoring_error"][j] == 0

    weight, n = float(settings["visual_weight"]), int(settings["ngram_size"])
    for j, exp in enumerate(expected_rows(rows, items, visual_weight=weight, n=n)):
        assert rm_scores[j].sum().item() == pytest.approx(exp["score"], abs=1e-6), (j, exp)
    m = len(rows[0]["extra_info"]["visual_annotations"])
    assert expected[0]["visual"] == pytest.approx(2 / m) and expected[0]["score"] == pytest.approx(1.0 + 0.7 * 2 / m)
    assert expected[1]["visual"] == 1.0 and expected[1]["accuracy"] == 0.0
    assert expected[3]["score"] == 0.0 and expected[3]["format"] == 0.0
    assert expected[4]["visual"] == 0.0  # forged <infoK> tags earn nothing
    assert expected[5]["ngram_penalty"] < 0.0
    assert expected[6]["visual"] is None and out.non_tensor_batch["judge_latency_s"][6] is None
    assert all(out.non_tensor_batch["judge_latency_s"][j] > 0 for j in (0, 1, 4))
    assert judge.request_count > requests_before
    assert all(h.get("Authorization") == f"Bearer {JUDGE_KEY}" for h in judge.headers)


def _batch_records(judge: OpenAITestServer, run) -> tuple[object, list]:
    before = len(judge.log)
    out = run()
    return out, judge.log[before:]


def test_judge_cost_budget_and_canaries_in_the_reward_loop(setup, reward_loop, judge: OpenAITestServer) -> None:
    """Per-row judge_usage accounts for every request the server saw; the run's budget holds across workers;
    canaries are judged with the paper's labels and tallied, never scored."""
    from transformers import AutoTokenizer

    _, rows, processor = setup
    tokenizer = AutoTokenizer.from_pretrained(processor)
    items = responses_for(rows) * 4  # 44 trajectories over 2 workers (even: verl pads a batch to the worker count)
    batch, _ = build_batch(tokenizer, rows, items)
    judge.latency_s = 0.2  # requests overlap: the budget is what limits them
    try:
        out, records = _batch_records(judge, lambda: reward_loop.compute_rm_score(batch))
    finally:
        judge.latency_s = 0.0
    infos = [
        {key: out.non_tensor_batch[key][j] for key in out.meta_info["reward_extra_keys"]} for j in range(len(items))
    ]
    usages = [parse_judge_usage(info["judge_usage"]) for info in infos]
    assert all(u is not None and u["started_at"] <= u["done_at"] for u in usages)

    # cost: the rows' counts add up to exactly what the server saw and reported
    metrics = reward_metrics(infos)
    chat = [r for r in records if r.status == 200]
    assert metrics["reward/judge_requests"] == len(records)
    assert metrics["reward/judge_prompt_tokens"] == sum(r.usage["prompt_tokens"] for r in chat)
    assert metrics["reward/judge_cached_prompt_tokens"] == sum(
        r.usage["prompt_tokens_details"]["cached_tokens"] for r in chat
    )
    assert metrics["reward/judge_cached_prompt_tokens"] > 0  # the long system prompt + examples are shared
    assert metrics["reward/judge_completion_tokens"] == sum(r.usage["completion_tokens"] for r in chat)
    assert metrics["reward/judge_exposed_s"] >= 0 and metrics["reward/judge_constrained"] == 1.0

    # canaries: one per trajectory, all answered truthfully by this judge
    canary_texts = {"".join(ch for ch in row.response if ch.isalnum()) for row in CANARY_ROWS}
    sent = [
        r
        for r in chat
        if any(t and t in "".join(ch for ch in r.body["messages"][-1]["content"] if ch.isalnum()) for t in canary_texts)
    ]
    assert metrics["reward/judge_canaries"] == len(items) == len(sent)
    assert metrics["reward/judge_canary_agreement"] == 1.0 and metrics["reward/judge_canary_hack_rate"] == 0.0

    # the run-wide budget: 5 in flight at most, over at most 3 + 2 pooled connections
    assert judge.max_in_flight <= JUDGE_BUDGET
    assert len({r.peer for r in records}) <= JUDGE_BUDGET


def test_judge_outage_reaches_the_breaker_with_url_and_server_error(
    setup, reward_loop, judge: OpenAITestServer
) -> None:
    from transformers import AutoTokenizer

    _, rows, processor = setup
    tokenizer = AutoTokenizer.from_pretrained(processor)
    items = responses_for(rows)[:6]
    batch, _ = build_batch(tokenizer, rows, items)
    judge.fail_next(100_000, status=503)
    try:
        out = reward_loop.compute_rm_score(batch)
    finally:
        judge.faults.clear()
    infos = [
        {key: out.non_tensor_batch[key][j] for key in out.meta_info["reward_extra_keys"]} for j in range(len(items))
    ]
    steps = [judge_step(infos, step=n) for n in (1, 2)]
    assert steps[0].judged == steps[0].failed == sum(1 for i in infos if i["judge_failed"] == 1) > 0
    breaker = JudgeBreaker(JudgeGuardSettings(), urls=[judge.base_url])
    assert breaker.observe(steps[0]) is None
    trip = breaker.observe(steps[1])
    assert trip is not None and "\n" not in trip.message
    assert f"{judge.base_url}/chat/completions" in trip.message and "HTTP 503: injected 503" in trip.message
    assert f"{steps[1].failed} of {steps[1].judged} judged rows failed at step 2" in trip.message


def test_judge_outage_never_crashes_the_reward_loop(setup, reward_loop, judge: OpenAITestServer) -> None:
    from transformers import AutoTokenizer

    _, rows, processor = setup
    tokenizer = AutoTokenizer.from_pretrained(processor)
    items = responses_for(rows)[:4]
    batch, _ = build_batch(tokenizer, rows, items)
    judge.fail_next(100_000, status=503)
    try:
        out = reward_loop.compute_rm_score(batch)
    finally:
        judge.faults.clear()
    failed = out.non_tensor_batch["judge_failed"]
    visual = out.non_tensor_batch["visual"]
    for j in range(len(items)):
        assert failed[j] == 1 and visual[j] == 0.0  # the failure policy: visual 0, flagged
    # the rule terms are still there: the good response keeps format + accuracy
    assert out.non_tensor_batch["score"][0] == pytest.approx(1.0)


def test_trainer_registration_reaches_ray_workers(setup) -> None:
    @ray.remote(num_cpus=0)
    class Probe:
        def trainer(self):
            import sys

            registered_before = "perception_r1.verl_plugin.trainer" in sys.modules
            from verl.trainer.ppo.v1 import get_trainer_cls

            cls = get_trainer_cls("perception_sync")
            return registered_before, f"{cls.__module__}.{cls.__qualname__}", [c.__name__ for c in cls.__mro__[:3]]

    before, name, mro = ray.get(Probe.remote().trainer.remote(), timeout=600)
    assert before is False  # the hook is lazy: verl's trainers are only imported where verl needs them
    assert name == "perception_r1.verl_plugin.trainer.PerceptionPPOTrainer"
    assert mro[1:3] == ["JudgeGuardMixin", "PPOTrainerSync"]


def test_training_metrics_read_back_from_transfer_queue(setup, reward_loop) -> None:
    """Reward infos stored the way verl's agent loop stores them reach ``reward/*`` metrics via the trainer hook."""
    import transfer_queue as tq
    from transfer_queue import KVBatchMeta
    from transformers import AutoTokenizer
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    from perception_r1.verl_plugin.metrics import reward_metrics
    from perception_r1.verl_plugin.trainer import fetch_reward_infos

    cfg, rows, processor = setup
    tokenizer = AutoTokenizer.from_pretrained(processor)
    items = responses_for(rows)
    batch, _ = build_batch(tokenizer, rows, items)
    out = reward_loop.compute_rm_score(batch)
    keys = out.meta_info["reward_extra_keys"]
    infos = [{key: out.non_tensor_batch[key][j] for key in keys} for j in range(len(items))]

    tq_cfg = OmegaConf.create(OmegaConf.to_container(cfg.transfer_queue))
    tq_cfg.enable = True
    tq_cfg.backend.SimpleStorage.num_data_storage_units = 1
    tq.init(tq_cfg)
    try:
        sample_keys = [f"uid{j}_0_0" for j in range(len(items))]
        fields = [
            {
                "responses": batch.batch["responses"][j],
                "extra_fields": {"min_global_steps": 1, "reward_extra_info": info},
            }
            for j, info in enumerate(infos)
        ]
        tq.kv_batch_put(
            keys=sample_keys,
            partition_id="train",
            fields=list_of_dict_to_tensordict(fields),
            tags=[{"status": "success"}] * len(items),
        )
        padding = [False] * (len(items) - 1) + [True]  # a padding row must not count
        meta = KVBatchMeta(partition_id="train", keys=sample_keys, tags=[{"is_padding": p} for p in padding])
        metrics = reward_metrics(fetch_reward_infos(meta))
        tq.kv_clear(keys=sample_keys, partition_id="train")
    finally:
        tq.close()

    assert metrics == reward_metrics(infos[:-1])
    visual = [info["visual"] for info in infos[:-1] if info["visual"] is not None]
    assert metrics["reward/visual/mean"] == pytest.approx(float(np.mean(visual)))
    assert metrics["reward/judge_failure_rate"] == 0.0
    assert 0 < metrics["reward/judge_latency_p50"] <= metrics["reward/judge_latency_p95"]


# ------------------------------------------------------------------ the breaker inside verl's own training loop


def _loop_trainer_cls():
    """verl's real ``PPOTrainer.fit`` loop and our ``JudgeGuardMixin``; only the GPU work is replaced: ``step``
    scores a batch through the real reward loop and stores it in TransferQueue like the agent loop, and
    ``_save_checkpoint`` records the call (there are no model workers to save)."""
    from verl.trainer.ppo.v1 import PPOTrainerSync

    from perception_r1.verl_plugin.trainer import JudgeGuardMixin

    class NoGPUWork(PPOTrainerSync):
        def __init__(self, config, make_step):  # noqa: D401 - verl's __init__ builds GPU workers
            self.config = config
            self.trainer_mode = "sync"
            self.global_steps = 0
            self.steps_per_epoch = 7
            self.total_training_steps = 7
            self.saved: list[int] = []
            self.steps_run: list[int] = []
            self._make_step = make_step
            self._init_dump_executor()

            class Weights:
                def update_weights(self, step):
                    pass

                def sleep_replicas(self):
                    pass

            self.checkpoint_manager = Weights()

        def step(self, metrics, timing_raw):
            self.steps_run.append(self.global_steps)
            return self._make_step(self.global_steps)

        def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
            metrics["training/global_step"] = global_steps  # the stock metrics need GPU-side fields

        def _save_checkpoint(self):
            self.saved.append(self.global_steps)

    class LoopTrainer(JudgeGuardMixin, NoGPUWork):
        def __init__(self, config, make_step):
            NoGPUWork.__init__(self, config, make_step)
            self._init_judge_guard(config)

    return LoopTrainer


@pytest.mark.parametrize("policy", ["abort", "zero"])
def test_breaker_stops_verls_loop_after_logging_the_step_and_saving_a_checkpoint(
    setup, reward_loop, judge: OpenAITestServer, policy: str, capsys, monkeypatch
) -> None:
    """A judge that fails at steps 3, 5 and 6: the blip at 3 is survived, 5-6 trip the breaker at step 6
    (patience 2); the step's metrics are logged, a checkpoint saved, fit raises one clear line."""
    import transfer_queue as tq
    from transfer_queue import KVBatchMeta
    from transformers import AutoTokenizer
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    from perception_r1.judge.guard import JudgeBreakerTripped

    cfg, rows, processor = setup
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    cfg.trainer.logger = ["console"]
    cfg.trainer.save_freq = 4
    cfg.trainer.test_freq = 0
    cfg.trainer.val_before_train = False
    cfg.trainer.default_local_dir = "/tmp/pr1-breaker-ckpt"
    cfg.reward.reward_kwargs.judge_failure_policy = policy
    monkeypatch.setenv("VLLM_SERVER_BASE_URL", judge.base_url)  # the driver's env, as Ray's runtime env gives it
    monkeypatch.setenv("JUDGE_MAX_CONCURRENCY", str(JUDGE_BUDGET))
    tokenizer = AutoTokenizer.from_pretrained(processor)
    items = responses_for(rows)[:4]  # 4 judged trajectories per step
    batch, _ = build_batch(tokenizer, rows, items)

    def make_step(n: int):
        if n in (3, 5, 6):
            judge.fail_next(100_000, status=503)
        try:
            out = reward_loop.compute_rm_score(batch)
        finally:
            judge.faults.clear()
        keys = out.meta_info["reward_extra_keys"]
        infos = [{key: out.non_tensor_batch[key][j] for key in keys} for j in range(len(items))]
        sample_keys = [f"s{n}uid{j}_0_0" for j in range(len(items))]
        fields = [
            {"responses": batch.batch["responses"][j], "extra_fields": {"min_global_steps": n, "reward_extra_info": i}}
            for j, i in enumerate(infos)
        ]
        tq.kv_batch_put(
            keys=sample_keys,
            partition_id="train",
            fields=list_of_dict_to_tensordict(fields),
            tags=[{"status": "success"}] * len(items),
        )
        return KVBatchMeta(partition_id="train", keys=sample_keys, tags=[{"is_padding": False}] * len(items))

    tq_cfg = OmegaConf.create(OmegaConf.to_container(cfg.transfer_queue))
    tq_cfg.enable = True
    tq_cfg.backend.SimpleStorage.num_data_storage_units = 1
    tq.init(tq_cfg)
    try:
        trainer = _loop_trainer_cls()(cfg, make_step)
        if policy == "abort":
            with pytest.raises(JudgeBreakerTripped) as info:
                trainer.fit(agent_loop_manager=None)
        else:
            trainer.fit(agent_loop_manager=None)
    finally:
        tq.close()
    out = capsys.readouterr()
    console = [line for line in out.out.splitlines() if line.startswith("step:")]
    # the driver states the split and the policy at start
    assert (
        "perception_r1: judge concurrency: JUDGE_MAX_CONCURRENCY=5 requests in flight for the run, split over "
        "reward.num_workers=2 reward workers: 2/3 each; timeouts: connect 10 s, total 300 s" in out.err
    )
    assert f"perception_r1: judge guard: failure policy {policy}" in out.err
    if policy == "zero":
        assert trainer.steps_run == list(range(1, 8)) and trainer.saved == [4, 7]  # every step, verl's saves only
        assert not any("judge_breaker_tripped" in line for line in console)
        return
    message = str(info.value)
    assert trainer.steps_run == [1, 2, 3, 4, 5, 6]  # survived the blip at 3, stopped after 6
    assert trainer.saved == [4, 6]  # verl's own save at 4, ours at 6 before stopping
    assert message.startswith("judge breaker: reward/judge_failure_rate above 0.20 for 2 consecutive steps (steps 5-6")
    assert "4 of 4 judged rows failed at step 6" in message and f"judge {judge.base_url}" in message
    assert "HTTP 503: injected 503" in message and "/tmp/pr1-breaker-ckpt/global_step_6" in message
    assert "\n" not in message and f"perception_r1: {message}" in out.err
    # the tripping step's metrics reached the logger before the loop ended
    assert len(console) == 6 and "reward/judge_breaker_tripped:1.0" in console[-1]
    assert "reward/judge_failure_rate:1.0" in console[-1] and "reward/judge_failure_rate:0.0" in console[3]
    assert "reward/judge_breaker_streak:1.0" in console[2] and "reward/judge_breaker_streak:0.0" in console[3]


def test_main_ppo_reads_the_breaker_line_out_of_a_ray_task_error(setup) -> None:
    """The trainer runs in verl's TaskRunner actor: its exception reaches the driver as Ray's RayTaskError."""
    from perception_r1.judge.guard import JudgeBreakerTripped
    from perception_r1.verl_plugin.main_ppo import breaker_message

    line = "judge breaker: reward/judge_failure_rate above 0.20 for 2 consecutive steps (steps 5-6: 1.00, 1.00)"

    @ray.remote(num_cpus=0)
    def trip():
        raise JudgeBreakerTripped(line)

    with pytest.raises(Exception) as info:
        ray.get(trip.remote(), timeout=600)
    assert "File " in str(info.value) and str(info.value) != line  # Ray's text: the remote stack, not the line
    assert breaker_message(info.value) == line  # what the wrapper prints instead
    assert breaker_message(RuntimeError("unrelated")) is None
