#!/usr/bin/env bash
# Serve the judge LLM with vLLM's OpenAI-compatible server (prefix caching on: every judge request shares the
# long system prompt and worked examples; prompt token details on: the trainer logs the cached tokens per step).
#
#   CUDA_VISIBLE_DEVICES=0,1 bash examples/serve_judge.sh [extra vllm serve args...]
#   DRY_RUN=1 bash examples/serve_judge.sh        # print the command (API key masked) and exit
#
# Env vars (defaults in brackets):
#   JUDGE_MODEL [Qwen/Qwen2.5-32B-Instruct]   model path or hub id
#   VLLM_MODEL_NAME [$JUDGE_MODEL]            served model name (the trainer's VLLM_MODEL_NAME must match)
#   JUDGE_HOST [0.0.0.0]  JUDGE_PORT [8000]   trainer: VLLM_SERVER_BASE_URL=http://<this host>:<port>/v1
#   VLLM_SERVER_API_KEY [unset: no auth]      passed to vLLM through VLLM_API_KEY, never on the command line
#   JUDGE_TP [2]  JUDGE_DP [1]                tensor / data parallel size (GPUs used = TP x DP)
#   JUDGE_MAX_MODEL_LEN [16384]  JUDGE_GPU_MEMORY_UTILIZATION [0.90]  JUDGE_MAX_NUM_SEQS [256]
#
# A variable this script would otherwise ignore is an error, not a silent default: any JUDGE_* name not listed
# here (e.g. JUDGE_PROT, JUDGE_TP_SIZE), and PORT / TP_SIZE when JUDGE_PORT / JUDGE_TP are not set (the spelling
# of an older README). JUDGE_MAX_CONCURRENCY, JUDGE_TIMEOUT and JUDGE_MAX_RETRIES belong to the trainer's judge
# client and are accepted (and ignored) here, so one shell can export both sides' settings.

set -euo pipefail

KNOWN_JUDGE_VARS=(JUDGE_MODEL JUDGE_HOST JUDGE_PORT JUDGE_TP JUDGE_DP JUDGE_MAX_MODEL_LEN JUDGE_GPU_MEMORY_UTILIZATION
  JUDGE_MAX_NUM_SEQS JUDGE_MAX_CONCURRENCY JUDGE_TIMEOUT JUDGE_MAX_RETRIES)
usage_names="JUDGE_MODEL, JUDGE_HOST, JUDGE_PORT, JUDGE_TP, JUDGE_DP, JUDGE_MAX_MODEL_LEN, JUDGE_GPU_MEMORY_UTILIZATION, JUDGE_MAX_NUM_SEQS"
die() {
  echo "serve_judge.sh: error: $*; this script reads ${usage_names} (see its header)" >&2
  exit 2
}
for name in $(compgen -e); do  # exported variable names
  [[ "${name}" == JUDGE_* ]] || continue
  [[ " ${KNOWN_JUDGE_VARS[*]} " == *" ${name} "* ]] || die "unknown variable ${name}"
done
if [[ -n "${PORT:-}" && -z "${JUDGE_PORT:-}" ]]; then
  die "PORT=${PORT} is set but this script reads JUDGE_PORT (set JUDGE_PORT=${PORT})"
fi
if [[ -n "${TP_SIZE:-}" && -z "${JUDGE_TP:-}" ]]; then
  die "TP_SIZE=${TP_SIZE} is set but this script reads JUDGE_TP (set JUDGE_TP=${TP_SIZE})"
fi

JUDGE_MODEL="${JUDGE_MODEL:-Qwen/Qwen2.5-32B-Instruct}"
VLLM_MODEL_NAME="${VLLM_MODEL_NAME:-$JUDGE_MODEL}"
JUDGE_HOST="${JUDGE_HOST:-0.0.0.0}"
JUDGE_PORT="${JUDGE_PORT:-8000}"
JUDGE_TP="${JUDGE_TP:-2}"
JUDGE_DP="${JUDGE_DP:-1}"
JUDGE_MAX_MODEL_LEN="${JUDGE_MAX_MODEL_LEN:-16384}"
JUDGE_GPU_MEMORY_UTILIZATION="${JUDGE_GPU_MEMORY_UTILIZATION:-0.90}"
JUDGE_MAX_NUM_SEQS="${JUDGE_MAX_NUM_SEQS:-256}"

cmd=(
  vllm serve "${JUDGE_MODEL}"
  --served-model-name "${VLLM_MODEL_NAME}"
  --host "${JUDGE_HOST}"
  --port "${JUDGE_PORT}"
  --tensor-parallel-size "${JUDGE_TP}"
  --data-parallel-size "${JUDGE_DP}"
  --max-model-len "${JUDGE_MAX_MODEL_LEN}"
  --gpu-memory-utilization "${JUDGE_GPU_MEMORY_UTILIZATION}"
  --max-num-seqs "${JUDGE_MAX_NUM_SEQS}"
  --enable-prefix-caching
  --enable-prompt-tokens-details
  --generation-config vllm
  "$@"
)

key_note="(no API key)"
if [[ -n "${VLLM_SERVER_API_KEY:-}" ]]; then
  export VLLM_API_KEY="${VLLM_SERVER_API_KEY}"   # vLLM reads it from the environment: not visible in `ps`
  key_note="VLLM_API_KEY=****"
fi

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  echo "DRY_RUN=1: ${key_note} ${cmd[*]}"
  exit 0
fi
echo "serving ${VLLM_MODEL_NAME} on ${JUDGE_HOST}:${JUDGE_PORT} ${key_note}" >&2
exec "${cmd[@]}"
