"""Promises of the trainer hook (``JudgeGuardMixin`` / ``PerceptionPPOTrainer``) checked in process, without Ray:
the start-up lines, reading the step's rows back from TransferQueue (padding skipped), per-step metrics, the
breaker's streak and trip, the checkpoint decision before a stop, and ``fit`` raising the breaker's line.

verl's own ``_compute_metrics`` needs a running TransferQueue; here the mixin sits on a minimal base that records
that it was called (the mixin's contract with verl is exactly that call), and TransferQueue's ``kv_batch_get`` is
the function ``fetch_reward_infos`` takes for that purpose. ``KVBatchMeta`` is TransferQueue's real class."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from transfer_queue.metadata import KVBatchMeta

from perception_r1.judge.client import JudgeSettings
from perception_r1.judge.guard import JudgeBreakerTripped, JudgeGuardSettings
from perception_r1.verl_plugin import TRAINER_MODE
from perception_r1.verl_plugin import trainer as trainer_module
from perception_r1.verl_plugin.trainer import (
    JudgeGuardMixin,
    PerceptionPPOTrainer,
    fetch_reward_infos,
    guard_settings_from_config,
    judge_start_lines,
)


def info(score=1.0, failed=0, latency=0.2, error=""):
    usage = {"requests": 1, "prompt_tokens": 10, "completion_tokens": 2, "started_at": 1.0, "done_at": 2.0}
    if error:
        usage["error"] = error
    return {
        "score": score,
        "visual": 0.0 if failed else 0.5,
        "judge_failed": failed,
        "judge_latency_s": None if failed else latency,
        "judge_usage": json.dumps(usage),
        "scoring_error": 0,
    }


def batch(infos, padding=()):
    keys = [f"k{i}" for i in range(len(infos))]
    tags = [{"is_padding": i in padding} for i in range(len(infos))]
    return KVBatchMeta(keys=keys, tags=tags, partition_id="train")


def store(infos):
    """TransferQueue's ``kv_batch_get`` for a step whose samples carry these ``reward_extra_info`` dicts."""
    calls = []

    def kv_batch_get(keys, partition_id, select_fields):
        calls.append((list(keys), partition_id, select_fields))
        return {"extra_fields": np.array([{"reward_extra_info": i} for i in infos], dtype=object)}

    return kv_batch_get, calls


def test_fetch_reads_extra_fields_of_the_batch_and_skips_padding():
    infos = [info(1.0), info(0.5), info(0.0)]
    kv_batch_get, calls = store(infos)
    assert fetch_reward_infos(batch(infos, padding={1}), kv_batch_get) == [infos[0], infos[2]]
    assert calls == [(["k0", "k1", "k2"], "train", ["extra_fields"])]


def test_fetch_without_tags_or_with_mismatched_tags_keeps_every_row():
    infos = [info(1.0), info(0.5)]
    kv_batch_get, _ = store(infos)
    assert fetch_reward_infos(KVBatchMeta(keys=[], tags=[], partition_id="p"), store(infos)[0]) == infos
    three = KVBatchMeta(keys=["a", "b", "c"], tags=[{"is_padding": True}] * 3, partition_id="p")
    assert fetch_reward_infos(three, kv_batch_get) == infos  # 3 tags for 2 rows: padding unknown, nothing dropped
    untagged = KVBatchMeta(keys=["a", "b"], tags=[{}, {"is_padding": False}], partition_id="p")
    assert fetch_reward_infos(untagged, kv_batch_get) == infos  # no padding tag: a real sample
    listed = lambda keys, partition_id, select_fields: {"extra_fields": [{"reward_extra_info": infos[0]}]}  # noqa: E731
    assert fetch_reward_infos(KVBatchMeta(keys=["a"], tags=[{}], partition_id="p"), listed) == [infos[0]]


def test_fetch_uses_transfer_queue_by_default(monkeypatch):
    infos = [info()]
    kv_batch_get, calls = store(infos)
    monkeypatch.setattr(trainer_module.tq, "kv_batch_get", kv_batch_get)
    assert fetch_reward_infos(batch(infos)) == infos and len(calls) == 1


def cfg(**reward_kwargs):
    return OmegaConf.create(
        {
            "reward": {"num_workers": 2, "reward_kwargs": reward_kwargs},
            "trainer": {"save_freq": 5, "default_local_dir": "/ckpt"},
        }
    )


def test_start_lines_state_budget_timeouts_policy_and_canaries():
    judge = JudgeSettings(base_urls=("http://j/v1",), max_concurrency=5, timeout_s=60, connect_timeout_s=2)
    budget, guard = judge_start_lines(cfg(), judge, JudgeGuardSettings())
    assert budget.endswith("reward.num_workers=2 reward workers: 2/3 each; timeouts: connect 2 s, total 60 s")
    assert guard == (
        "judge guard: failure policy abort: stop after 2 consecutive step(s) with reward/judge_failure_rate above "
        "0.20; 16 canaries per step"
    )
    settings = JudgeGuardSettings(
        judge_failure_policy="zero",
        judge_canaries_per_step=4,
        judge_min_canary_agreement=0.8,
        judge_max_canary_hack_rate=0.1,
    )
    assert judge_start_lines(cfg(), judge, settings)[1] == (
        "judge guard: failure policy zero: train on through judge failures (visual = 0, counted); "
        "4 canaries per step, agreement floor 0.80, hack-rate ceiling 0.10"
    )
    off = judge_start_lines(cfg(), judge, JudgeGuardSettings(judge_canaries_per_step=0))[1]
    assert off.endswith("; canaries off")
    assert judge_start_lines(cfg(), None, JudgeGuardSettings()) == [
        "judge: none configured (VLLM_SERVER_BASE_URL unset): rows with visual annotations get judge_failed"
    ]
    one = judge_start_lines(OmegaConf.create({}), judge, JudgeGuardSettings())[0]
    assert "reward.num_workers=1 reward workers: 5 each" in one


def test_guard_settings_come_from_reward_kwargs():
    settings = guard_settings_from_config(cfg(judge_failure_patience=4, visual_weight=0.5))
    assert settings.judge_failure_patience == 4 and settings == JudgeGuardSettings(judge_failure_patience=4)


class RecordingBase:
    """Stands where verl's ``PPOTrainerSync`` stands in the MRO: records the stock metrics call."""

    def __init__(self, config):
        self.config = config
        self.calls = []
        self.saved = []
        self.global_steps = 1
        self.total_training_steps = 100

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        self.calls.append((global_steps, epoch))
        self.timings = [*getattr(self, "timings", []), timing_raw]
        self.batches = [*getattr(self, "batches", []), batch]
        metrics["stock/metric"] = 1.0

    def _save_checkpoint(self):
        self.saved.append(self.global_steps)

    def fit(self, agent_loop_manager):
        self.calls.append(("fit", agent_loop_manager))


class Guarded(JudgeGuardMixin, RecordingBase):
    def __init__(self, config, infos_per_step):
        super().__init__(config)
        self._init_judge_guard(config)
        self._steps = iter(infos_per_step)

    def _reward_infos(self, batch):
        self.read = [*getattr(self, "read", []), batch]
        rows = next(self._steps)
        if isinstance(rows, Exception):
            raise rows
        return rows


def make(monkeypatch, capsys, config, infos_per_step, url="http://judge:8000"):
    monkeypatch.setenv("VLLM_SERVER_BASE_URL", url)
    trainer = Guarded(config, infos_per_step)
    return trainer, capsys.readouterr().err


def test_init_prints_the_start_lines_and_knows_the_judge(monkeypatch, capsys):
    trainer, err = make(monkeypatch, capsys, cfg(), [])
    assert trainer._judge_breaker.urls == ["http://judge:8000/v1"] and trainer._judge_stop is None
    assert err.count("perception_r1: ") == 2 and "perception_r1: judge guard: failure policy abort" in err
    assert "split over reward.num_workers=2 reward workers" in err  # the run's config, not a default


def test_init_takes_the_guard_from_the_runs_config(monkeypatch, capsys):
    trainer, err = make(monkeypatch, capsys, cfg(judge_failure_policy="zero", judge_failure_patience=5), [])
    assert trainer._judge_guard == JudgeGuardSettings(judge_failure_policy="zero", judge_failure_patience=5)
    assert "failure policy zero" in err
    monkeypatch.delenv("VLLM_SERVER_BASE_URL")
    alone = Guarded(cfg(), [])
    assert alone._judge_breaker.urls == [] and "perception_r1: judge: none configured" in capsys.readouterr().err


def test_each_step_adds_reward_metrics_and_the_breaker_streak(monkeypatch, capsys):
    healthy = [info(1.0), info(0.5)]
    trainer, _ = make(monkeypatch, capsys, cfg(), [healthy])
    metrics = {}
    the_batch, timing = object(), {"gen": 1.5}
    trainer._compute_metrics(the_batch, metrics, timing, global_steps=3, epoch=0)
    assert trainer.calls == [(3, 0)] and metrics["stock/metric"] == 1.0 and trainer.timings == [timing]
    assert trainer.batches == [the_batch] and trainer.read == [the_batch]  # verl's batch, passed on as it is
    assert metrics["reward/score/mean"] == 0.75 and metrics["reward/judge_failure_rate"] == 0.0
    assert metrics["reward/judge_breaker_streak"] == 0.0 and "reward/judge_breaker_tripped" not in metrics
    assert metrics["reward/metrics_error"] == 0.0


def test_a_broken_metrics_read_warns_and_leaves_the_breaker_alone(monkeypatch, capsys, caplog):
    trainer, _ = make(monkeypatch, capsys, cfg(), [KeyError("extra_fields")])  # the read raises
    metrics = {}
    trainer._compute_metrics(object(), metrics, {}, global_steps=1, epoch=0)
    assert metrics == {"stock/metric": 1.0, "reward/metrics_error": 1.0}  # the miss is counted on the step
    assert caplog.messages == ["could not compute reward training metrics: KeyError: 'extra_fields'"]


def test_the_breaker_trips_saves_a_checkpoint_ends_the_loop_and_fit_raises(monkeypatch, capsys, caplog):
    down = [info(failed=1, error="HTTP 503: down"), info(failed=1, error="HTTP 503: down")]
    trainer, _ = make(monkeypatch, capsys, cfg(), [down, down])
    for step in (7, 8):
        trainer.global_steps = step
        metrics = {}
        trainer._compute_metrics(object(), metrics, {}, global_steps=step, epoch=0)
        assert metrics["reward/judge_breaker_streak"] == float(step - 6)
    assert metrics["reward/judge_breaker_tripped"] == 1.0
    assert trainer.saved == [8] and trainer.total_training_steps == 8  # saved now: 8 is not a save_freq step
    line = trainer._judge_stop
    assert line.startswith("judge breaker: reward/judge_failure_rate above 0.20 for 2 consecutive steps (steps 7-8")
    assert line.endswith("; checkpoint /ckpt/global_step_8 (resume with trainer.resume_mode=auto)")
    assert f"perception_r1: {line}" in capsys.readouterr().err and caplog.messages == [line]
    with pytest.raises(JudgeBreakerTripped) as raised:
        trainer.fit("manager")
    assert str(raised.value) == line and trainer.calls[-1] == ("fit", "manager")


def test_fit_without_a_trip_returns(monkeypatch, capsys):
    trainer, _ = make(monkeypatch, capsys, cfg(), [])
    assert trainer.fit("m") is None and trainer.calls == [("fit", "m")]


@pytest.mark.parametrize(
    "save_freq, step, total, saved, note",
    [
        (5, 10, 100, [], "; checkpoint /ckpt/global_step_10 (resume with trainer.resume_mode=auto)"),  # verl saved
        (5, 100, 100, [], "; checkpoint /ckpt/global_step_100 (resume with trainer.resume_mode=auto)"),  # last step
        (5, 7, 100, [7], "; checkpoint /ckpt/global_step_7 (resume with trainer.resume_mode=auto)"),
        (0, 7, 100, [], "; no checkpoint saved (trainer.save_freq <= 0)"),
        (-1, 7, 100, [], "; no checkpoint saved (trainer.save_freq <= 0)"),
        (None, 7, 100, [], "; no checkpoint saved (trainer.save_freq <= 0)"),
        ("absent", 7, 100, [], "; no checkpoint saved (trainer.save_freq <= 0)"),
        (1, 7, 100, [], "; checkpoint /ckpt/global_step_7 (resume with trainer.resume_mode=auto)"),  # every step
        (5, 99, 99, [], "; checkpoint /ckpt/global_step_99 (resume with trainer.resume_mode=auto)"),  # last, off-freq
        (5, 98, 99, [98], "; checkpoint /ckpt/global_step_98 (resume with trainer.resume_mode=auto)"),
    ],
)
def test_checkpoint_before_stop(monkeypatch, capsys, save_freq, step, total, saved, note):
    config = cfg()
    if save_freq == "absent":
        del config.trainer["save_freq"]
    else:
        config.trainer.save_freq = save_freq
    trainer, _ = make(monkeypatch, capsys, config, [])
    trainer.global_steps, trainer.total_training_steps = step, total
    assert trainer._checkpoint_before_stop() == note and trainer.saved == saved


def test_a_failing_checkpoint_is_named_in_the_line(monkeypatch, capsys):
    trainer, _ = make(monkeypatch, capsys, cfg(), [])
    trainer.global_steps = 7

    def broken():
        raise OSError("disk full")

    trainer._save_checkpoint = broken
    assert trainer._checkpoint_before_stop() == "; checkpoint failed (OSError: disk full)"


def test_the_registered_trainer_is_the_sync_trainer_with_the_guard():
    from verl.trainer.ppo.v1 import get_trainer_cls

    assert get_trainer_cls(TRAINER_MODE) is PerceptionPPOTrainer
    trainer = PerceptionPPOTrainer.__new__(PerceptionPPOTrainer)
    trainer.trainer_mode = "perception_sync"
    assert trainer.trainer_mode == "sync" and isinstance(trainer, JudgeGuardMixin)


def test_the_mixin_reads_the_steps_rows_from_transfer_queue(monkeypatch):
    infos = [info(1.0), info(0.0)]
    kv_batch_get, calls = store(infos)
    monkeypatch.setattr(trainer_module.tq, "kv_batch_get", kv_batch_get)
    assert JudgeGuardMixin._reward_infos(object(), batch(infos, padding={0})) == [infos[1]] and len(calls) == 1


def test_the_registered_trainer_gives_the_runs_config_to_verl_and_to_the_guard(monkeypatch, capsys):
    """verl's own ``__init__`` needs Ray and TransferQueue (the slow CPU training tests run it); here it records
    the config it was given."""
    seen = []
    monkeypatch.setattr(trainer_module.PPOTrainerSync, "__init__", lambda self, config: seen.append(config))
    monkeypatch.setenv("VLLM_SERVER_BASE_URL", "http://judge:8000")
    config = cfg(judge_failure_patience=7)
    trainer = PerceptionPPOTrainer(config)
    assert seen == [config] and trainer._judge_guard.judge_failure_patience == 7
    assert "perception_r1: judge guard: failure policy abort: stop after 7 consecutive" in capsys.readouterr().err
