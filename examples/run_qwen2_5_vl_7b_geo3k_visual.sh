#!/usr/bin/env bash
# GRPO on Geometry3K with the Perception-R1 visual-perception reward (Qwen2.5-VL-7B, verl 0.9.1).
#
#   bash examples/serve_judge.sh                             # on a judge node / other GPUs (see docs/training.md)
#   perception-r1 data geo3k ...                             # builds TRAIN_FILE / VAL_FILE
#   bash examples/run_qwen2_5_vl_7b_geo3k_visual.sh [hydra overrides...]
#   DRY_RUN=1 bash examples/run_qwen2_5_vl_7b_geo3k_visual.sh   # checks + composed config, no Ray/GPU
#
# Reward: score = 0.1*format + 0.9*accuracy + 0.7*visual + ngram_penalty (settings under reward.reward_kwargs;
# change one with e.g. reward.reward_kwargs.visual_weight=0.5). Hyperparameters are the paper's run:
# 128 prompts x 8 rollouts, global/mini batch 128, lr 1e-6, weight decay 1e-3, 5% warmup, no KL,
# prompt/response 4096 tokens, 3136..1806336 pixels per image, 25 epochs, validation every 5, save every 10.
# Env vars: see examples/common.sh (MODEL_PATH NNODES N_GPUS_PER_NODE TRAIN_FILE VAL_FILE EXPERIMENT_NAME
# PROJECT_NAME VLLM_SERVER_BASE_URL VLLM_SERVER_API_KEY VLLM_MODEL_NAME; ROLLOUT_TP for vLLM tensor parallel).

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

pr1_defaults \
  Qwen/Qwen2.5-VL-7B-Instruct \
  qwen2_5_vl_7b_geo3k_visual \
  "$HOME/data/geo3k_visual/train.parquet" \
  "$HOME/data/geo3k_visual/test.parquet"
ROLLOUT_TP="${ROLLOUT_TP:-1}"

task_overrides=(
  # GRPO, no KL anywhere
  algorithm.adv_estimator=grpo
  algorithm.use_kl_in_reward=False
  actor_rollout_ref.actor.use_kl_loss=False
  actor_rollout_ref.actor.entropy_coeff=0
  # 128 prompts x 8 rollouts per step; one mini-batch of 128 prompts (global batch = mini batch)
  data.train_batch_size=128
  actor_rollout_ref.rollout.n=8
  actor_rollout_ref.actor.ppo_mini_batch_size=128
  # lengths and images (Qwen2.5-VL processor pixel limits reach the dataset, the agent loop and vLLM)
  data.max_prompt_length=4096
  data.max_response_length=4096
  data.filter_overlong_prompts=True
  data.truncation=error
  data.image_key=images
  ++data.mm_processor_kwargs.min_pixels=3136
  ++data.mm_processor_kwargs.max_pixels=1806336
  # optimizer
  actor_rollout_ref.actor.optim.lr=1e-6
  actor_rollout_ref.actor.optim.weight_decay=1e-3
  actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.05
  # memory / throughput (FSDP2 actor, token-budget micro-batches; attention: pr1_attention_overrides)
  actor_rollout_ref.model.enable_gradient_checkpointing=True
  actor_rollout_ref.actor.use_dynamic_bsz=True
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384
  actor_rollout_ref.actor.fsdp_config.param_offload=False
  actor_rollout_ref.actor.fsdp_config.optimizer_offload=False
  # rollout
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.tensor_model_parallel_size="${ROLLOUT_TP}"
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  actor_rollout_ref.rollout.max_num_batched_tokens=16384
  actor_rollout_ref.rollout.enable_chunked_prefill=True
  # reward: the paper's weights, spelled out
  ++reward.reward_kwargs.format_weight=0.1
  ++reward.reward_kwargs.accuracy_weight=0.9
  ++reward.reward_kwargs.visual_weight=0.7
  ++reward.reward_kwargs.ngram_size=20
  ++reward.reward_kwargs.ngram_max_penalty=-2.0
  # schedule
  trainer.total_epochs=25
  trainer.test_freq=5
  trainer.save_freq=10
  trainer.val_before_train=True
  trainer.critic_warmup=0
)

pr1_launch --judge "${task_overrides[@]}" "$@"
