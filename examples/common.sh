# shellcheck shell=bash
# Shared launcher functions. Every examples/run_*.sh sources this file:
#
#   source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
#   pr1_defaults Qwen/Qwen2.5-VL-7B-Instruct qwen2_5_vl_7b_mytask "$HOME/data/mytask/train.parquet" "$HOME/data/mytask/test.parquet"
#   task_overrides=( algorithm.adv_estimator=grpo ... )   # the task's hyperparameters (verl hydra overrides)
#   pr1_launch [--judge] "${task_overrides[@]}" "$@"      # "$@": the user's extra overrides, applied last
#
# pr1_launch runs the preflight (python -m perception_r1.verl_plugin.preflight: data files and every image, reward
# settings, the judge when --judge is given, GPUs), composes the verl config
# (`python -m perception_r1.verl_plugin.main_ppo ... --cfg job`) and checks it (batch shape against the GPU count,
# token budgets, rows for one step, checkpoints, loggers, a judge every node can reach), then on several nodes runs
# the node check in a Ray task per node, and finally either prints the composed config (DRY_RUN=1: no Ray, no
# GPU) or starts training with it.
#
# Environment (defaults in brackets):
#   MODEL_PATH [launcher's model]   NNODES [1]   N_GPUS_PER_NODE [8]   TRAIN_FILE / VAL_FILE [launcher's paths]
#   PROJECT_NAME [perception_r1]   EXPERIMENT_NAME [launcher's name]   DRY_RUN [0]   PYTHON [python3]
#   LOGGERS [console,swanlab] (trainer.logger)   SWANLAB_MODE [local]   SWANLAB_LOG_DIR [$PWD/swanlog]
#   WANDB_MODE [offline when wandb is selected and WANDB_API_KEY is unset]   WANDB_PROJECT / WANDB_DIR [unset]
#   CHECKPOINT_DIR [$PWD/checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME] (absolute, on shared storage when NNODES > 1)
#   KEEP_CHECKPOINTS [2] (trainer.max_actor_ckpt_to_keep; `all` keeps every one)
#   ACTOR_STRATEGY [fsdp2]   ATTN_IMPLEMENTATION [auto: flash_attention_2 when flash_attn imports, else sdpa]
#   PROMPT_FILTER_WORKERS [auto: this node's CPUs, at most 32] (data.filter_overlong_prompts_workers)
#   CHECK_NODES [auto: when NNODES > 1] (1: run the per-node Ray check on one node too; 0: skip it)
#   VLLM_SERVER_BASE_URL [http://127.0.0.1:8000/v1]   VLLM_MODEL_NAME [Qwen/Qwen2.5-32B-Instruct]
#   VLLM_SERVER_API_KEY [EMPTY] (judge launchers only; the key is read from the environment, never put in argv/config)
# Env vars forwarded to every Ray worker through the runtime env (never API keys): see FORWARDED_ENV in
# perception_r1/verl_plugin/main_ppo.py.
#   BACKEND [gpu]: `cpu` runs verl's trainer on the host CPU (tests, CI, `make demo`): see pr1_backend_overrides

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
  BACKEND="${BACKEND:-gpu}"
  LOGGERS="${LOGGERS:-console,swanlab}"
  LOGGERS="${LOGGERS// /}"
  export SWANLAB_MODE="${SWANLAB_MODE:-local}"
  export SWANLAB_LOG_DIR="${SWANLAB_LOG_DIR:-$PWD/swanlog}"
  if [[ ",${LOGGERS}," == *",wandb,"* && -z "${WANDB_MODE:-}" && -z "${WANDB_API_KEY:-}" ]]; then
    export WANDB_MODE=offline  # wandb's online mode without a key and without a TTY raises inside the TaskRunner
    echo "launcher: note: LOGGERS has wandb but WANDB_API_KEY is unset: WANDB_MODE=offline (export it to log online)" >&2
  fi
  CHECKPOINT_DIR="${CHECKPOINT_DIR:-$PWD/checkpoints/$PROJECT_NAME/$EXPERIMENT_NAME}"
  KEEP_CHECKPOINTS="${KEEP_CHECKPOINTS:-2}"
  ACTOR_STRATEGY="${ACTOR_STRATEGY:-fsdp2}"
  ATTN_IMPLEMENTATION="${ATTN_IMPLEMENTATION:-auto}"
  PROMPT_FILTER_WORKERS="${PROMPT_FILTER_WORKERS:-auto}"
  CHECK_NODES="${CHECK_NODES:-auto}"
}

# pr1_attention_overrides: fills PR1_ATTN_OVERRIDES with the policy's attention implementation. flash-attn when
# `import flash_attn` works (packed sequences: use_remove_padding=True); otherwise sdpa without padding removal
# (verl's padding removal needs flash-attn's varlen kernels), with one warning line saying what that costs.
pr1_attention_overrides() {
  local impl="${ATTN_IMPLEMENTATION:-auto}"
  if [[ "${impl}" == "auto" && "${BACKEND:-gpu}" == "cpu" ]]; then
    impl=eager  # the CPU backend: no flash-attn, and transformers' eager attention is what the hf rollout runs
  elif [[ "${impl}" == "auto" ]]; then
    if "${PYTHON}" -c "import flash_attn" >/dev/null 2>&1; then
      impl=flash_attention_2
    else
      impl=sdpa
      echo "launcher: warning: flash_attn is not importable: the policy runs attn_implementation=sdpa with" \
        "use_remove_padding=False, so every micro-batch is padded to its longest sequence (more GPU memory and" \
        "slower actor/ref passes than flash-attn's packed sequences); see docs/training.md, 'flash-attn'" >&2
    fi
  fi
  case "${impl}" in
    flash_attention_2) PR1_ATTN_OVERRIDES=(
      "++actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2"
      "actor_rollout_ref.model.use_remove_padding=True") ;;
    sdpa | eager) PR1_ATTN_OVERRIDES=(
      "++actor_rollout_ref.model.override_config.attn_implementation=${impl}"
      "actor_rollout_ref.model.use_remove_padding=False") ;;
    *)
      echo "launcher: error: ATTN_IMPLEMENTATION=${impl}: expected auto, flash_attention_2, sdpa or eager" >&2
      exit 2 ;;
  esac
}

# pr1_judge_defaults: judge env vars (exported so the preflight, verl and Ray workers see them).
pr1_judge_defaults() {
  export VLLM_SERVER_BASE_URL="${VLLM_SERVER_BASE_URL:-http://127.0.0.1:8000/v1}"
  export VLLM_MODEL_NAME="${VLLM_MODEL_NAME:-Qwen/Qwen2.5-32B-Instruct}"
  export VLLM_SERVER_API_KEY="${VLLM_SERVER_API_KEY:-EMPTY}"
}

# pr1_base_overrides: fills the array PR1_BASE_OVERRIDES with what every launcher shares (paths, cluster shape,
# logging, checkpoints, the actor engine and attention, and our reward manager wired through verl 0.9.1's
# reward.* keys).
pr1_base_overrides() {
  local keep="${KEEP_CHECKPOINTS}" workers="${PROMPT_FILTER_WORKERS}"
  if [[ "${keep}" == "all" ]]; then
    keep=null
  fi
  if [[ "${workers}" == "auto" ]]; then  # verl's prompt-length filter: datasets.filter(num_proc=...) over every row
    workers="$("${PYTHON}" -c 'import os; print(max(1, min(32, len(os.sched_getaffinity(0)))))')"
  fi
  pr1_attention_overrides
  PR1_BASE_OVERRIDES=(
    "data.train_files=${TRAIN_FILE}"
    "data.val_files=${VAL_FILE}"
    "data.filter_overlong_prompts_workers=${workers}"
    "actor_rollout_ref.model.path=${MODEL_PATH}"
    "actor_rollout_ref.actor.strategy=${ACTOR_STRATEGY}"
    "${PR1_ATTN_OVERRIDES[@]}"
    "trainer.nnodes=${NNODES}"
    "trainer.n_gpus_per_node=${N_GPUS_PER_NODE}"
    "trainer.project_name=${PROJECT_NAME}"
    "trainer.experiment_name=${EXPERIMENT_NAME}"
    "trainer.logger=[${LOGGERS}]"
    "trainer.default_local_dir=${CHECKPOINT_DIR}"
    "trainer.max_actor_ckpt_to_keep=${keep}"
    "trainer.max_critic_ckpt_to_keep=${keep}"
    "reward.reward_manager.source=importlib"
    "reward.reward_manager.name=PerceptionRewardManager"
    "reward.reward_manager.module.path=pkg://perception_r1.verl_plugin.reward_manager"
  )
}

# pr1_backend_overrides: fills PR1_BACKEND_OVERRIDES for BACKEND=cpu (empty for gpu) and exports what every Ray
# process needs to load the CPU backend (perception_r1/verl_plugin/cpu: the `cpu` platform, gloo, the `hf`
# transformers rollout). They come last on the command line: they define the backend, so they win over the task's
# vLLM / flash-attn settings. verl's placement groups always ask for GPUs, so Ray gets N logical ones.
pr1_backend_overrides() {
  PR1_BACKEND_OVERRIDES=()
  case "${BACKEND}" in
    gpu) ;;
    cpu)
      export VERL_PLATFORM=cpu
      case ",${VERL_USE_EXTERNAL_MODULES:-}," in  # keep the user's own verl plugin modules
        *,perception_r1.verl_plugin.cpu,*) ;;
        *) export VERL_USE_EXTERNAL_MODULES="${VERL_USE_EXTERNAL_MODULES:+${VERL_USE_EXTERNAL_MODULES},}perception_r1.verl_plugin.cpu" ;;
      esac
      local gpus=$(( NNODES * N_GPUS_PER_NODE ))
      PR1_BACKEND_OVERRIDES=(
        trainer.device=cpu
        "++ray_kwargs.ray_init.num_gpus=${gpus}"
        "++ray_kwargs.ray_init.num_cpus=${RAY_NUM_CPUS:-$(( gpus + 12 ))}"
        transfer_queue.backend.SimpleStorage.num_data_storage_units=1
        actor_rollout_ref.rollout.name=hf
        actor_rollout_ref.actor.strategy=fsdp2
        actor_rollout_ref.ref.strategy=fsdp2
      )
      ;;
    *)
      echo "BACKEND=${BACKEND}: expected gpu or cpu" >&2
      return 2
      ;;
  esac
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
  pr1_backend_overrides || exit $?
  local overrides=("${PR1_BASE_OVERRIDES[@]}" "$@" ${PR1_BACKEND_OVERRIDES[@]+"${PR1_BACKEND_OVERRIDES[@]}"})
  local dry=()
  if [[ "${DRY_RUN}" == "1" ]]; then
    dry=(--dry-run)
  fi

  # The node check (a Ray task on every node) replaces the local GPU count when it runs.
  local nodes=() gpus="${N_GPUS_PER_NODE}"
  if [[ "${CHECK_NODES}" == "1" || ( "${CHECK_NODES}" == "auto" && "${NNODES}" != "1" ) ]]; then
    nodes=(--nodes)
    gpus=0
  fi

  "${PYTHON}" -m perception_r1.verl_plugin.preflight \
    --data "${TRAIN_FILE}" --data "${VAL_FILE}" --gpus "${gpus}" --backend "${BACKEND}" ${judge[@]+"${judge[@]}"} ${dry[@]+"${dry[@]}"} \
    -- "${overrides[@]}" || exit $?

  # The composed config: checked as verl will run it, then printed (DRY_RUN) or trained.
  local composed status=0
  composed="$(mktemp "${TMPDIR:-/tmp}/perception_r1_config.XXXXXX")"
  "${PYTHON}" -m perception_r1.verl_plugin.main_ppo "${overrides[@]}" --cfg job > "${composed}" || status=$?
  if [[ "${status}" == "0" ]]; then
    local remote=()
    if [[ "${#judge[@]}" != "0" ]]; then
      remote=(--remote-judge)
    fi
    "${PYTHON}" -m perception_r1.verl_plugin.preflight --config "${composed}" \
      ${remote[@]+"${remote[@]}"} ${nodes[@]+"${nodes[@]}"} ${dry[@]+"${dry[@]}"} || status=$?
  fi
  if [[ "${status}" == "0" && "${DRY_RUN}" == "1" ]]; then
    echo "DRY_RUN=1: composed config below; not starting Ray or training" >&2
    cat "${composed}"
  fi
  rm -f "${composed}"
  if [[ "${status}" != "0" || "${DRY_RUN}" == "1" ]]; then
    return "${status}"
  fi
  exec "${PYTHON}" -m perception_r1.verl_plugin.main_ppo "${overrides[@]}"
}

# pr1_perception_launch [OVERRIDE...]: the perception-policy paper's shared run ("Perception-R1: Pioneering
# Perception Policy with RL"): GRPO, 8 rollouts per prompt, lr 1e-6, KL loss 0.04 (low_var_kl, none in the reward),
# max response 2048 tokens, temperature 1.0, no thinking by default, no judge. Call pr1_defaults first. Task knobs
# (env vars, defaults in brackets; a launcher may set its own default before calling):
#   COORD_FRAME [qwen2_vl] (empty: the task has no coordinates)   MIN_PIXELS [3136]   MAX_PIXELS [1003520]
#   THINKING [0] (must match the data: `--thinking` when building)   TRAIN_BATCH_SIZE [128]   TOTAL_EPOCHS [1]
#   ROLLOUT_TP [1]   MAX_PROMPT_LENGTH [2048]
# PR1_TASK_OVERRIDES (array) adds the task's own overrides; the arguments (the user's) come last.
pr1_perception_launch() {
  ROLLOUT_TP="${ROLLOUT_TP:-1}"
  COORD_FRAME="${COORD_FRAME-qwen2_vl}"
  MIN_PIXELS="${MIN_PIXELS:-3136}"
  MAX_PIXELS="${MAX_PIXELS:-1003520}"
  THINKING="${THINKING:-0}"
  TRAIN_BATCH_SIZE="${TRAIN_BATCH_SIZE:-128}"
  TOTAL_EPOCHS="${TOTAL_EPOCHS:-1}"
  MAX_PROMPT_LENGTH="${MAX_PROMPT_LENGTH:-2048}"

  # The data must be built the way this run scores it (thinking template; per-image pixel limits for qwen2_5_vl,
  # whose boxes are pixels of the resized image).
  local pixel_check=()
  if [[ "${COORD_FRAME}" == "qwen2_5_vl" ]]; then
    pixel_check=(--min-pixels "${MIN_PIXELS}" --max-pixels "${MAX_PIXELS}")
  fi
  "${PYTHON}" -m perception_r1.data.perception_prompts --data "${TRAIN_FILE}" --data "${VAL_FILE}" \
    --thinking "${THINKING}" ${pixel_check[@]+"${pixel_check[@]}"} || exit $?

  local overrides=(
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
    data.max_prompt_length="${MAX_PROMPT_LENGTH}"
    data.max_response_length=2048
    data.filter_overlong_prompts=True
    data.truncation=error
    data.image_key=images
    ++data.mm_processor_kwargs.min_pixels="${MIN_PIXELS}"
    ++data.mm_processor_kwargs.max_pixels="${MAX_PIXELS}"
    # optimizer
    actor_rollout_ref.actor.optim.lr=1e-6
    # memory / throughput (attention and padding removal: pr1_attention_overrides)
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
    # reward: the template the model answers in
    ++reward.reward_kwargs.thinking="$([[ "${THINKING}" == 1 ]] && echo true || echo false)"
    # schedule
    trainer.total_epochs="${TOTAL_EPOCHS}"
    trainer.test_freq=50
    trainer.save_freq=100
    trainer.val_before_train=True
    trainer.critic_warmup=0
  )
  if [[ -n "${COORD_FRAME}" ]]; then  # the model's coordinate frame (one conversion point: rewards/boxes.py)
    overrides+=(
      ++reward.reward_kwargs.coord_frame="${COORD_FRAME}"
      ++reward.reward_kwargs.min_pixels="${MIN_PIXELS}"
      ++reward.reward_kwargs.max_pixels="${MAX_PIXELS}"
    )
  fi
  pr1_launch "${overrides[@]}" ${PR1_TASK_OVERRIDES[@]+"${PR1_TASK_OVERRIDES[@]}"} "$@"
}
