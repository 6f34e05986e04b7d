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
# Env vars: see examples/common.sh (pr1_defaults and pr1_perception_launch: MODEL_PATH NNODES N_GPUS_PER_NODE
# TRAIN_FILE VAL_FILE EXPERIMENT_NAME
# PROJECT_NAME DRY_RUN PYTHON), plus MIN_PIXELS [3136] / MAX_PIXELS [2408448] (processor limits), THINKING [0]
# (must match the data: `--thinking` when building), TRAIN_BATCH_SIZE [128], TOTAL_EPOCHS [1], ROLLOUT_TP [1].

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

pr1_defaults \
  Qwen/Qwen2-VL-2B-Instruct \
  qwen2_vl_2b_pageocr_ocr \
  "$HOME/data/pageocr/train.parquet" \
  "$HOME/data/pageocr/val.parquet"
COORD_FRAME=""  # OCR answers in text, no coordinates
MAX_PIXELS="${MAX_PIXELS:-2408448}"  # pages need resolution: up to 3072 image tokens
MAX_PROMPT_LENGTH="${MAX_PROMPT_LENGTH:-4096}"

pr1_perception_launch "$@"
