#!/usr/bin/env bash
# GRPO visual grounding on RefCOCO with the Perception-R1 grounding reward (Qwen2-VL-2B-Instruct, verl 0.9.1).
#
#   perception-r1 data refcoco ...                              # builds TRAIN_FILE / VAL_FILE (docs/perception_training.md)
#   bash examples/run_qwen2_vl_2b_refcoco_grounding.sh [hydra overrides...]
#   DRY_RUN=1 bash examples/run_qwen2_vl_2b_refcoco_grounding.sh   # checks + composed config, no Ray/GPU
#
# Reward (data_source refcoco): score = format + IoU of the predicted box (settings under reward.reward_kwargs,
# e.g. reward.reward_kwargs.iou_squared=true). Hyperparameters are the paper's ("Perception-R1: Pioneering
# Perception Policy with Reinforcement Learning"): GRPO, 8 rollouts per prompt, lr 1e-6, KL loss coefficient
# 0.04, max response 2048 tokens, temperature 1.0, no thinking. No judge.
# Env vars: see examples/common.sh (pr1_defaults and pr1_perception_launch: MODEL_PATH NNODES N_GPUS_PER_NODE
# TRAIN_FILE VAL_FILE EXPERIMENT_NAME
# PROJECT_NAME DRY_RUN PYTHON), plus COORD_FRAME [qwen2_vl] (the model's box frame), MIN_PIXELS [3136] /
# MAX_PIXELS [1003520] (processor limits), THINKING [0] (must match the data: `--thinking` when building),
# TRAIN_BATCH_SIZE [128], TOTAL_EPOCHS [1], ROLLOUT_TP [1].

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

pr1_defaults \
  Qwen/Qwen2-VL-2B-Instruct \
  qwen2_vl_2b_refcoco_grounding \
  "$HOME/data/refcoco/train.parquet" \
  "$HOME/data/refcoco/val.parquet"

pr1_perception_launch "$@"
