#!/usr/bin/env bash
# GRPO page OCR with the Perception-R1 OCR reward (Qwen2-VL-2B-Instruct, verl 0.9.1).
#
#   perception-r1 data pageocr ...                             # builds TRAIN_FILE / VAL_FILE (docs/perception_training.md)
#   bash examples/run_qwen2_vl_2b_pageocr_ocr.sh [hydra overrides...]
#   DRY_RUN=1 bash examples/run_qwen2_vl_2b_pageocr_ocr.sh   # checks + composed config, no Ray/GPU
#
# Reward (data_source pageocr): format + (1 - normalized edit distance) of the whitespace-normalized page text
# (settings under reward.reward_kwargs). Hyperparameters are the paper's ("Perception-R1: Pioneering Perception
# Policy with Reinforcement Learning"): GRPO, 8 rollouts per prompt, lr 1e-6, KL loss coefficient 0.04, max
# response 2048 tokens, temperature 1.0, no thinking. No judge. Pages need resolution: MAX_PIXELS defaults to
# 2408448 (up to 3072 image tokens), hence a 4096-token prompt budget.
# Env vars: see examples/common.sh (MODEL_PATH NNODES N_GPUS_PER_NODE TRAIN_FILE VAL_FILE EXPERIMENT_NAME
# PROJECT_NAME DRY_RUN PYTHON), plus MIN_PIXELS [3136] / MAX_PIXELS [2408448] (processor limits), THINKING [0]
# (must match the data: `--thinking` when building), TRAIN_BATCH_SIZE [128], TOTAL_EPOCHS [1], ROLLOUT_TP [1].

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

pr1_defaults \
  Qwen/Qwen2-VL-2B-Instruct \
  qwen2_vl_2b_pageocr_ocr \
  "$HOME/data/pageocr/train.parquet" \
  "$HOME/data/pageocr/val.parquet"
ROLLOUT_TP="${ROLLOUT_TP:-1}"
MIN_PIXELS="${MIN_PIXELS:-3136}"
MAX_PIXELS="${MAX_PIXELS:-2408448}"
THINKING="${THINKING:-0}"
TRAIN_BATCH_SIZE="${TRAIN_BATCH_SIZE:-128}"
TOTAL_EPOCHS="${TOTAL_EPOCHS:-1}"

# The data must be built the way this run scores it (thinking template).
"${PYTHON}" -m perception_r1.data.perception_prompts --data "${TRAIN_FILE}" --data "${VAL_FILE}" \
  --thinking "${THINKING}" || exit $?

task_overrides=(
  # GRPO with a KL loss to the reference policy (coefficient 0.04), none in the reward
  algorithm.adv_estimator=grpo
  algorithm.use_kl_in_reward=False
  actor_rollout_ref.actor.use_kl_loss=True
  actor_rollout_ref.actor.kl_loss_coef=0.04
  actor_rollout_ref.actor.kl_loss_type=low_var_kl
  actor_rollout_ref.actor.entropy_coeff=0
  # prompts x 8 rollouts per step, one mini-batch per step
  data.train_batch_size="${TRAIN_BATCH_SIZE}"
  actor_rollout_ref.rollout.n=8
  actor_rollout_ref.actor.ppo_mini_batch_size="${TRAIN_BATCH_SIZE}"
  actor_rollout_ref.rollout.temperature=1.0
  # lengths and images (processor pixel limits reach the dataset, the agent loop and vLLM)
  data.max_prompt_length=4096
  data.max_response_length=2048
  data.filter_overlong_prompts=True
  data.truncation=error
  data.image_key=images
  ++data.mm_processor_kwargs.min_pixels="${MIN_PIXELS}"
  ++data.mm_processor_kwargs.max_pixels="${MAX_PIXELS}"
  # optimizer
  actor_rollout_ref.actor.optim.lr=1e-6
  # memory / throughput
  actor_rollout_ref.model.use_remove_padding=True
  actor_rollout_ref.model.enable_gradient_checkpointing=True
  actor_rollout_ref.actor.use_dynamic_bsz=True
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384
  actor_rollout_ref.ref.fsdp_config.param_offload=True
  # rollout
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.tensor_model_parallel_size="${ROLLOUT_TP}"
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  actor_rollout_ref.rollout.max_num_batched_tokens=16384
  actor_rollout_ref.rollout.enable_chunked_prefill=True
  # reward: the template the model answers in (OCR has no coordinates)
  ++reward.reward_kwargs.thinking="$([[ "${THINKING}" == 1 ]] && echo true || echo false)"
  # schedule
  trainer.total_epochs="${TOTAL_EPOCHS}"
  trainer.test_freq=50
  trainer.save_freq=100
  trainer.val_before_train=True
  trainer.critic_warmup=0
)

pr1_launch "${task_overrides[@]}" "$@"
