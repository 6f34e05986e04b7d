# shellcheck shell=bash
# Shared launcher functions. Every examples/run_*.sh sources this file:
#
#   source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
#   pr1_defaults Qwen/Qwen2.5-VL-7B-Instruct qwen2_5_vl_7b_mytask "$HOME/data/mytask/train.parquet" "$HOME/data/mytask/test.parquet"
#   task_overrides=( algorithm.adv_estimator=grpo ... )   # the task's hyperparameters (verl hydra overrides)
#   pr1_launch [--judge] "${task_overrides[@]}" "$@"      # "$@": the user's extra overrides, applied last
#
# pr1_launch runs the preflight (python -m perception_r1.verl_plugin.preflight: data files, reward settings,
# the judge when --judge is given, GPUs), then either prints the composed verl config (DRY_RUN=1:
# `python -m perception_r1.verl_plugin.main_ppo ... --cfg job`, no Ray, no GPU) or starts training with it.
#
# Environment (defaults in brackets):
#   MODEL_PATH [launcher's model]   NNODES [1]   N_GPUS_PER_NODE [8]   TRAIN_FILE / VAL_FILE [launcher's paths]
#   PROJECT_NAME [perception_r1]   EXPERIMENT_NAME [launcher's name]   DRY_RUN [0]   PYTHON [python3]
#   SWANLAB_MODE [local]   SWANLAB_LOG_DIR [$PWD/swanlog]
#   VLLM_SERVER_BASE_URL [http://127.0.0.1:8000/v1]   VLLM_MODEL_NAME [Qwen/Qwen2.5-32B-Instruct]
#   VLLM_SERVER_API_KEY [EMPTY] (judge launchers only; the key is read from the environment, never put in argv/config)

set -euo pipefail

PR1_EXAMPLES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# pr1_defaults MODEL EXPERIMENT TRAIN_FILE VAL_FILE: fill unset env vars with the launcher's defaults.
pr1_defaults() {
  MODEL_PATH="${MODEL_PATH:-$1}"
  EXPERIMENT_NAME="${EXPERIMENT_NAME:-$2}"
  TRAIN_FILE="${TRAIN_FILE:-$3}"
  VAL_FILE="${VAL_FILE:-$4}"
  PROJECT_NAME="${PROJECT_NAME:-perception_r1}"
  NNODES="${NNODES:-1}"
  N_GPUS_PER_NODE="${N_GPUS_PER_NODE:-8}"
  DRY_RUN="${DRY_RUN:-0}"
  PYTHON="${PYTHON:-python3}"
  export SWANLAB_MODE="${SWANLAB_MODE:-local}"
  export SWANLAB_LOG_DIR="${SWANLAB_LOG_DIR:-$PWD/swanlog}"
}

# pr1_judge_defaults: judge env vars (exported so the preflight, verl and Ray workers see them).
pr1_judge_defaults() {
  export VLLM_SERVER_BASE_URL="${VLLM_SERVER_BASE_URL:-http://127.0.0.1:8000/v1}"
  export VLLM_MODEL_NAME="${VLLM_MODEL_NAME:-Qwen/Qwen2.5-32B-Instruct}"
  export VLLM_SERVER_API_KEY="${VLLM_SERVER_API_KEY:-EMPTY}"
}

# pr1_base_overrides: fills the array PR1_BASE_OVERRIDES with what every launcher shares (paths, cluster shape,
# logging, and our reward manager wired through verl 0.9.1's reward.* keys).
pr1_base_overrides() {
  PR1_BASE_OVERRIDES=(
    "data.train_files=${TRAIN_FILE}"
    "data.val_files=${VAL_FILE}"
    "actor_rollout_ref.model.path=${MODEL_PATH}"
    "trainer.nnodes=${NNODES}"
    "trainer.n_gpus_per_node=${N_GPUS_PER_NODE}"
    "trainer.project_name=${PROJECT_NAME}"
    "trainer.experiment_name=${EXPERIMENT_NAME}"
    "trainer.logger=[console,swanlab]"
    "reward.reward_manager.source=importlib"
    "reward.reward_manager.name=PerceptionRewardManager"
    "reward.reward_manager.module.path=pkg://perception_r1.verl_plugin.reward_manager"
  )
}

# pr1_launch [--judge] OVERRIDE...: preflight, then DRY_RUN config print or the training run.
pr1_launch() {
  local judge=()
  if [[ "${1:-}" == "--judge" ]]; then
    judge=(--judge)
    pr1_judge_defaults
    shift
  fi
  pr1_base_overrides
  local overrides=("${PR1_BASE_OVERRIDES[@]}" "$@")
  local dry=()
  if [[ "${DRY_RUN}" == "1" ]]; then
    dry=(--dry-run)
  fi

  "${PYTHON}" -m perception_r1.verl_plugin.preflight \
    --data "${TRAIN_FILE}" --data "${VAL_FILE}" --gpus "${N_GPUS_PER_NODE}" ${judge[@]+"${judge[@]}"} ${dry[@]+"${dry[@]}"} \
    -- "${overrides[@]}" || exit $?

  if [[ "${DRY_RUN}" == "1" ]]; then
    echo "DRY_RUN=1: composed config below; not starting Ray or training" >&2
    "${PYTHON}" -m perception_r1.verl_plugin.main_ppo "${overrides[@]}" --cfg job
    return $?
  fi
  exec "${PYTHON}" -m perception_r1.verl_plugin.main_ppo "${overrides[@]}"
}
