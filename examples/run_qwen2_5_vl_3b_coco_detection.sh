#!/usr/bin/env bash
# GRPO object detection on COCO with the Perception-R1 detection reward (Qwen2.5-VL-3B-Instruct, verl 0.9.1).
#
#   perception-r1 data coco-detection --min-pixels 3136 --max-pixels 1003520 ...   # TRAIN_FILE / VAL_FILE
#   perception-r1 data curriculum ...   # optional: easy -> hard order (docs/perception_training.md)
#   bash examples/run_qwen2_5_vl_3b_coco_detection.sh [hydra overrides...]
#   DRY_RUN=1 bash examples/run_qwen2_5_vl_3b_coco_detection.sh   # checks + composed config, no Ray/GPU
#
# Reward (data_source coco_detection): Hungarian matching on IoU; format + location + classification + recall
# (F1 at IoU 0.5) - missing (settings under reward.reward_kwargs). Hyperparameters are the paper's
# ("Perception-R1: Pioneering Perception Policy with Reinforcement Learning"): GRPO, 8 rollouts per prompt,
# lr 1e-6, KL loss coefficient 0.04, max response 2048 tokens, temperature 1.0, no thinking. No judge.
# Qwen2.5-VL answers in pixels of the resized image (COORD_FRAME=qwen2_5_vl): the data must be built with the
# same --min-pixels/--max-pixels as MIN_PIXELS/MAX_PIXELS (checked before launch).
# Curriculum: a train file written by `perception-r1 data curriculum` is trained in its order (data.shuffle=False;
# DATA_SHUFFLE [auto] overrides: True/False).
# Env vars: see examples/common.sh (pr1_defaults and pr1_perception_launch: MODEL_PATH NNODES N_GPUS_PER_NODE
# TRAIN_FILE VAL_FILE EXPERIMENT_NAME
# PROJECT_NAME DRY_RUN PYTHON), plus COORD_FRAME [qwen2_5_vl] (the model's box frame), MIN_PIXELS [3136] /
# MAX_PIXELS [1003520] (processor limits), THINKING [0] (must match the data: `--thinking` when building),
# TRAIN_BATCH_SIZE [128], TOTAL_EPOCHS [1], ROLLOUT_TP [1].

source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

pr1_defaults \
  Qwen/Qwen2.5-VL-3B-Instruct \
  qwen2_5_vl_3b_coco_detection \
  "$HOME/data/coco_detection/train.parquet" \
  "$HOME/data/coco_detection/val.parquet"
COORD_FRAME="${COORD_FRAME:-qwen2_5_vl}"  # Qwen2.5-VL answers in pixels of the resized image
DATA_SHUFFLE="${DATA_SHUFFLE:-auto}"

# A curriculum file is already ordered easy -> hard: verl must read it sequentially (SequentialSampler).
if [[ "${DATA_SHUFFLE}" == "auto" ]]; then
  DATA_SHUFFLE="$("${PYTHON:-python3}" -m perception_r1.data.curriculum --shuffle-for "${TRAIN_FILE}")" || exit $?
fi
PR1_TASK_OVERRIDES=(data.shuffle="${DATA_SHUFFLE}")

pr1_perception_launch "$@"
