"""Launcher preflight: fail fast, with one clear line, before any Ray or GPU work.

``python -m perception_r1.verl_plugin.preflight --data TRAIN --data VAL [--judge] [--gpus N] [--dry-run]
[-- HYDRA_OVERRIDES...]`` checks, in order:

1. the hydra overrides: no legacy reward keys (``custom_reward_function.*`` / ``reward_model.*``, which verl
   0.9.1's ``main_ppo`` silently ignores) and ``reward.reward_kwargs.*`` names/values every task accepts;
2. each data parquet: readable, has verl's columns (``prompt``, ``data_source``, ``reward_model.ground_truth``,
   ``extra_info``, ``images``), every row's ``data_source`` is a registered task whose ``validate(ground_truth,
   extra_info)`` passes, and the ``<image>`` placeholders in the prompt match the row's images;
3. the judge (``--judge``): ``VLLM_SERVER_BASE_URL`` is set, every replica answers and serves ``VLLM_MODEL_NAME``;
4. GPUs (skipped with ``--dry-run`` and with ``--backend cpu``, where Ray gets logical GPUs): at least ``--gpus``
   visible to this node.

The data check also opens every image entry the way verl 0.9.1 reads it (``{"bytes": ...}`` decodes, an
``{"image": path}`` file exists and decodes), because verl's prompt filter silently drops a row whose image fails.

``--config COMPOSED.yaml`` (the launchers write it with ``main_ppo ... --cfg job``) checks the composed verl config
before any Ray or GPU work, with the rules verl 0.9.1 applies only at run time (see :func:`check_batch_shape`):
batch sizes against the data-parallel size, token budgets against the sequence length, enough training rows for
one step, checkpoint retention and an absolute checkpoint dir on several nodes, known loggers, and no loopback
judge URL on several nodes (``--remote-judge``). ``--nodes`` then runs the node checks inside one Ray task per
node of the running cluster (:func:`check_nodes`): the judge as that node's workers see it, the data files and
image paths, the GPUs.

Exit 0 when everything passes; otherwise exit 1 and print ``preflight: error: ...`` (no traceback) to stderr.
Without ``--nodes`` it imports neither verl nor torch (the config check reads the YAML with omegaconf).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REQUIRED_COLUMNS = ("prompt", "data_source", "reward_model", "extra_info")
IMAGE_PLACEHOLDER = "<image>"
_REWARD_KWARG = re.compile(r"^\+{0,2}reward\.reward_kwargs\.([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_LEGACY = re.compile(r"^[+~]{0,2}(custom_reward_function|reward_model)(\.|=|$)")


class PreflightError(Exception):
    """A failed check; its message is the one line the launcher shows."""


# ------------------------------------------------------------------ overrides


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def check_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """Reject legacy reward keys; validate ``reward.reward_kwargs.*``; return those settings."""
    from . import split_reward_kwargs

    settings: dict[str, str] = {}
    for item in overrides:
        if _LEGACY.match(item):
            raise PreflightError(
                f"override {item!r}: legacy reward keys are silently ignored by verl 0.9.1's main_ppo; "
                "use reward.* keys (e.g. reward.reward_kwargs.<setting>=<value>)"
            )
        match = _REWARD_KWARG.match(item)
        if match:
            settings[match.group(1)] = _unquote(match.group(2))
    try:
        split_reward_kwargs(settings)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    return settings


# ------------------------------------------------------------------ data


def _prompt_text(prompt: Any, where: str) -> str:
    if not isinstance(prompt, list) or not prompt:
        raise PreflightError(f"{where}: field 'prompt': expected a non-empty list of chat messages")
    texts = []
    for index, message in enumerate(prompt):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or not message.get("role"):
            raise PreflightError(
                f"{where}: field 'prompt[{index}]': expected {{'role': str, 'content': str}}, got {message!r:.80}"
            )
        texts.append(message["content"])
    return "\n".join(texts)


def _rows(path: Path, columns: list[str], batch_size: int = 512) -> Iterator[dict[str, Any]]:
    """Rows as dicts; ``images`` is replaced by its length (image bytes are never materialized)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
        data = {name: batch.column(name) for name in batch.schema.names}
        if "images" in data:
            lengths = pc.list_value_length(data.pop("images")).to_pylist()
        else:
            lengths = None
        table = {name: column.to_pylist() for name, column in data.items()}
        for i in range(batch.num_rows):
            row = {name: values[i] for name, values in table.items()}
            if lengths is not None:
                row["images"] = lengths[i]
            yield row


def check_data(path: str | os.PathLike[str], require_images: bool = True) -> int:
    """Validate one verl parquet file (see module doc); return its row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..rewards.registry import registered_tasks

    file = Path(path)
    if not file.is_file():
        raise PreflightError(f"data file {file} does not exist (build it with `perception-r1 data ...`)")
    try:
        schema = pq.read_schema(file)
    except (pa.ArrowException, OSError) as exc:
        raise PreflightError(f"data file {file} is not a readable parquet file ({exc})") from None
    required = list(REQUIRED_COLUMNS) + (["images"] if require_images else [])
    missing = [name for name in required if name not in schema.names]
    if missing:
        raise PreflightError(f"data file {file}: missing column(s) {missing}; verl needs {required}")
    if require_images and not pa.types.is_list(schema.field("images").type):
        raise PreflightError(
            f"data file {file}: column 'images' must be a list of images, got {schema.field('images').type}"
        )

    tasks = registered_tasks()
    count = 0
    try:
        for index, row in enumerate(_rows(file, required)):
            count += 1
            where = f"data file {file} row {index}"
            source = row["data_source"]
            task = tasks.get(source) if isinstance(source, str) else None
            if task is None:
                raise PreflightError(
                    f"{where}: field 'data_source': {source!r} is not a registered task {sorted(tasks)}"
                )
            reward_model = row["reward_model"]
            if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
                raise PreflightError(f"{where}: field 'reward_model.ground_truth': missing")
            extra_info = row["extra_info"]
            if extra_info is not None and not isinstance(extra_info, dict):
                raise PreflightError(
                    f"{where}: field 'extra_info': expected a struct/dict, got {type(extra_info).__name__}"
                )
            try:
                task.validate(reward_model["ground_truth"], extra_info or {})
            except ValueError as exc:
                message = str(exc)
                if message.startswith("ground_truth"):
                    message = "reward_model." + message
                raise PreflightError(f"{where}: field {message}") from None
            text = _prompt_text(row["prompt"], where)
            if require_images:
                images = row["images"] or 0
                placeholders = text.count(IMAGE_PLACEHOLDER)
                if placeholders != images:
                    raise PreflightError(
                        f"{where}: field 'prompt': {placeholders} '{IMAGE_PLACEHOLDER}' placeholder(s) but "
                        f"{images} image(s) in 'images'"
                    )
    except (pa.ArrowException, OSError) as exc:
        raise PreflightError(f"data file {file} could not be read ({exc})") from None
    if count == 0:
        raise PreflightError(f"data file {file} has no rows")
    return count


# ------------------------------------------------------------------ judge and GPUs


def check_judge(timeout_s: float = 10.0) -> str:
    """The judge from the env vars answers and serves the configured model; returns a short description."""
    from ..judge.client import JudgeClient, JudgeSettings, JudgeUnavailable

    try:
        settings = JudgeSettings.from_env()
    except ValueError as exc:
        raise PreflightError(f"judge: {exc}") from None
    if settings is None:
        raise PreflightError(
            "judge: VLLM_SERVER_BASE_URL is not set; start the judge (bash examples/serve_judge.sh) and export "
            "VLLM_SERVER_BASE_URL, VLLM_MODEL_NAME and VLLM_SERVER_API_KEY"
        )
    try:
        JudgeClient(settings).preflight_sync(timeout_s)
    except JudgeUnavailable as exc:
        raise PreflightError(f"judge: {exc}") from None
    return f"{settings.model} at {','.join(settings.base_urls)}"


def visible_gpus() -> int:
    """GPUs this node can use: ``nvidia-smi -L`` entries, limited by ``CUDA_VISIBLE_DEVICES`` when set."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if out.returncode != 0:
        return 0
    count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip()]))
    return count


def check_gpus(required: int) -> int:
    count = visible_gpus()
    if count == 0:
        raise PreflightError(
            "no GPU found on this node (nvidia-smi lists none); training needs GPUs (DRY_RUN=1 skips this check)"
        )
    if count < required:
        raise PreflightError(f"N_GPUS_PER_NODE={required} but this node has {count} visible GPU(s)")
    return count


# ------------------------------------------------------------------ images


def _image_fields(file: Path) -> list[str]:
    """Field names of the ``images`` list items; ``PreflightError`` when they are not structs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    item = pq.read_schema(file).field("images").type.value_type
    if not pa.types.is_struct(item):
        raise PreflightError(
            f"data file {file}: column 'images' must hold {{'bytes': ...}} or {{'image': path}} structs, got {item}"
        )
    return [item.field(i).name for i in range(item.num_fields)]


def _open_image(source: Any) -> tuple[int, int]:
    """``(width, height)`` from the header of an image file or bytes (no full decode)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as image:
        return int(image.width), int(image.height)


def check_images(path: str | os.PathLike[str], decode: bool = True, batch_size: int = 64) -> dict[str, int]:
    """Every image entry of a verl parquet resolves the way verl 0.9.1 reads it; counts by kind.

    verl's ``process_image`` takes ``{"bytes": ...}`` (embedded; it refuses an entry that also has an ``image``
    field) or ``{"image": path | file:// | http(s) URL}``. A path must be absolute (relative paths resolve against
    each Ray worker's working directory) and exist; with ``decode`` the image header must open. URLs are counted,
    not fetched. verl's prompt filter silently drops a row whose image fails, so this is checked before launch.
    With ``decode=False`` only file paths are checked (the node check: embedded bytes travel with the data).
    """
    import pyarrow.parquet as pq

    file = Path(path)
    fields = _image_fields(file)
    if "bytes" in fields and "image" in fields:
        raise PreflightError(
            f"data file {file}: column 'images' has both 'bytes' and 'image' fields; verl 0.9.1 refuses such "
            "entries (vision_utils.process_image); rebuild with embedded images (the default) or --image-paths"
        )
    if "bytes" not in fields and "image" not in fields:
        raise PreflightError(
            f"data file {file}: column 'images' entries have fields {fields}; verl 0.9.1 reads 'bytes' "
            "(embedded image) or 'image' (a path or URL)"
        )
    counts = {"embedded": 0, "files": 0, "urls": 0}
    if not decode and "image" not in fields:
        return counts
    checked: set[str] = set()
    parquet = pq.ParquetFile(file)
    index = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=["images"]):
        for entries in batch.column("images").to_pylist():
            for j, entry in enumerate(entries or []):
                where = f"data file {file} row {index}: field 'images[{j}]"
                if "bytes" in fields:
                    data = (entry or {}).get("bytes")
                    if not data:
                        raise PreflightError(f"{where}.bytes': empty; expected the encoded image")
                    if decode:
                        try:
                            _open_image(data)
                        except Exception as exc:
                            raise PreflightError(f"{where}.bytes': not a decodable image ({exc})") from None
                    counts["embedded"] += 1
                    continue
                value = (entry or {}).get("image")
                if not isinstance(value, str) or not value.strip():
                    raise PreflightError(f"{where}.image': expected an image path or URL, got {value!r:.80}")
                if value.startswith(("http://", "https://")):
                    counts["urls"] += 1
                    continue
                if value.startswith("data:image"):
                    counts["embedded"] += 1
                    continue
                local = value[len("file://") :] if value.startswith("file://") else value
                counts["files"] += 1
                if local in checked:
                    continue
                if not os.path.isabs(local):
                    raise PreflightError(
                        f"{where}.image': relative path {local!r} resolves against each Ray worker's working "
                        "directory; embed the images (the builders' default) or store absolute paths"
                    )
                if not os.path.isfile(local):
                    raise PreflightError(
                        f"{where}.image': image file not found: {local} (paths must exist on every node; the "
                        "builders embed image bytes by default)"
                    )
                if decode:
                    try:
                        _open_image(local)
                    except Exception as exc:
                        raise PreflightError(f"{where}.image': {local} is not a decodable image ({exc})") from None
                checked.add(local)
            index += 1
    return counts


# ------------------------------------------------------------------ the composed config


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The composed verl config (``main_ppo ... --cfg job`` output) as a resolved dict."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    except Exception as exc:  # a YAML or interpolation error
        raise PreflightError(f"composed config {path}: cannot be read ({type(exc).__name__}: {exc})") from None


def _get(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return default if node is None else node


def _int_setting(cfg: Mapping[str, Any], dotted: str, default: int | None = None) -> int | None:
    value = _get(cfg, dotted, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PreflightError(f"{dotted}={value!r}: expected an integer")
    return value


def uses_reference_policy(cfg: Mapping[str, Any]) -> bool:
    """verl 0.9.1's ``need_reference_policy``: a KL loss or a KL penalty in the reward needs the ref model."""
    return bool(_get(cfg, "actor_rollout_ref.actor.use_kl_loss", False)) or bool(
        _get(cfg, "algorithm.use_kl_in_reward", False)
    )


def _sequence_parallel(cfg: Mapping[str, Any], role: str = "actor") -> int:
    """Ulysses size of ``actor``/``ref`` (the deprecated role-level key wins when > 1, as in FSDPActorConfig)."""
    legacy = _get(cfg, f"actor_rollout_ref.{role}.ulysses_sequence_parallel_size", 1) or 1
    engine = _get(cfg, f"actor_rollout_ref.{role}.fsdp_config.ulysses_sequence_parallel_size", 1) or 1
    return int(legacy) if int(legacy) > 1 else int(engine)


def _actor_dp(cfg: Mapping[str, Any], world: int) -> tuple[int, str]:
    """The actor's data-parallel size and how it is derived (verl 0.9.1's engine ``get_data_parallel_size``)."""
    strategy = _get(cfg, "actor_rollout_ref.actor.strategy", "fsdp")
    if strategy == "megatron":
        mega = "actor_rollout_ref.actor.megatron."
        parallel = 1
        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"):
            parallel *= int(_get(cfg, mega + key, 1) or 1)
        if world % parallel:
            raise PreflightError(
                f"batch shape: {world} GPUs do not divide into megatron TP·PP·CP = {parallel}; choose a GPU count "
                f"that is a multiple of {parallel}"
            )
        return world // parallel, f"megatron TP·PP·CP {parallel}"
    sp = _sequence_parallel(cfg)
    if world % sp:
        raise PreflightError(
            f"batch shape: {world} GPUs do not divide by actor ulysses_sequence_parallel_size {sp} (verl builds a "
            f"(dp, sp) device mesh); use a GPU count that is a multiple of {sp}"
        )
    return world // sp, f"ulysses {sp}"


def _shape_problem(cfg: Mapping[str, Any], nnodes: int, gpus: int, mini: int, train: int) -> str | None:
    """The first run-time rule of verl 0.9.1 this shape breaks, as a message; ``None`` when it passes."""
    world = nnodes * gpus
    n = int(_get(cfg, "actor_rollout_ref.rollout.n", 1) or 1)
    rollout = "actor_rollout_ref.rollout."
    replica = 1
    for key in ("tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size"):
        replica *= int(_get(cfg, rollout + key, 1) or 1)
    if world % replica:
        return (
            f"the rollout replica size (vLLM TP·DP·PP = {replica}) does not divide the {world} GPUs "
            f"(trainer.nnodes·n_gpus_per_node = {nnodes}·{gpus}); verl asserts world_size % infer_world_size == 0 "
            "when it builds the rollout"
        )
    if replica > gpus and replica % gpus:
        return (
            f"a rollout replica of {replica} GPUs spans nodes of {gpus} GPUs unevenly; verl asserts the replica size "
            f"is a multiple of n_gpus_per_node"
        )
    try:
        dp, how = _actor_dp(cfg, world)
    except PreflightError as exc:
        return str(exc).removeprefix("batch shape: ")
    if mini > train:
        return (
            f"actor.ppo_mini_batch_size {mini} > data.train_batch_size {train}: verl pads every step up to one "
            "mini-batch of no-op samples"
        )
    if train % mini:
        return (
            f"data.train_batch_size {train} is not a multiple of actor.ppo_mini_batch_size {mini}: verl pads every "
            f"step to lcm(dp, {mini}·{n}) with no-op samples, so part of each update is padding"
        )
    if (mini * n) % dp:
        return (
            f"actor.ppo_mini_batch_size·rollout.n = {mini}·{n} = {mini * n} does not divide by the actor's {dp} "
            f"data-parallel ranks ({nnodes}·{gpus} GPUs, {how}); verl 0.9.1 pads each step to "
            f"lcm({dp}, {mini * n}) = {math.lcm(dp, mini * n)} samples and then asserts mini_batch_size % dp == 0 "
            "at the first actor update"
        )
    if not _get(cfg, "actor_rollout_ref.actor.use_dynamic_bsz", False):
        per_rank_mini = mini * n // dp
        per_rank_step = train * n // dp
        checks = [("actor.ppo_micro_batch_size_per_gpu", per_rank_mini, "samples per rank in a mini-batch")]
        checks.append(("rollout.log_prob_micro_batch_size_per_gpu", per_rank_step, "samples per rank in a step"))
        if uses_reference_policy(cfg):
            checks.append(("ref.log_prob_micro_batch_size_per_gpu", per_rank_step, "samples per rank in a step"))
        for key, size, what in checks:
            micro = _get(cfg, "actor_rollout_ref." + key)
            if micro is None:
                return f"use_dynamic_bsz=False needs actor_rollout_ref.{key} (verl asserts it is set)"
            if size % int(micro):
                return (
                    f"actor_rollout_ref.{key}={micro} does not divide the {size} {what} ({mini if 'ppo' in key else train}"
                    f"·{n} / {dp} ranks); verl asserts data size % micro_batch_size_per_gpu == 0"
                )
    return None


def _shape_alternatives(cfg: Mapping[str, Any], nnodes: int, gpus: int, mini: int, train: int) -> str:
    """Nearby shapes that pass: other GPU counts per node (or node counts), or other mini-batch sizes."""
    def nearest(values: list[int], current: int) -> str:
        picked = [v for v in values if v < current][-1:] + [v for v in values if v > current][:1]
        return " or ".join(str(v) for v in picked)

    options = []
    ok_gpus = [g for g in range(1, max(8, gpus) + 1) if _shape_problem(cfg, nnodes, g, mini, train) is None]
    ok_nodes = [k for k in range(1, 2 * nnodes + 3) if _shape_problem(cfg, k, gpus, mini, train) is None]
    if ok_gpus:
        options.append(f"N_GPUS_PER_NODE={nearest(ok_gpus, gpus)} (NNODES={nnodes})")
    elif ok_nodes:
        options.append(f"NNODES={nearest(ok_nodes, nnodes)} (N_GPUS_PER_NODE={gpus})")
    steps = max(1, train // mini)
    sizes = [m for m in range(max(1, mini // 2), mini * 2 + 1) if _shape_problem(cfg, nnodes, gpus, m, m * steps) is None]
    if sizes:
        near = sorted(sizes, key=lambda m: (abs(m - mini), m))[:2]
        options.append(
            "actor_rollout_ref.actor.ppo_mini_batch_size="
            + " or ".join(str(m) for m in sorted(near))
            + f" with data.train_batch_size = {steps}× that"
        )
    return "; valid: " + ", or ".join(options) if options else ""


def check_batch_shape(cfg: Mapping[str, Any]) -> str:
    """Refuse batch shapes verl 0.9.1 accepts at start-up but crashes on (or silently pads) at run time.

    verl's ``validate_config`` skips its divisibility checks when ``use_dynamic_bsz=True``; at run time the sync
    trainer pads each step to ``lcm(dp, ppo_mini_batch_size·n)`` samples (``trainer_base._balance_batch``) and the
    engine asserts ``ppo_mini_batch_size·n % dp == 0`` (``engine_workers.train_mini_batch``), where
    ``dp = nnodes·n_gpus_per_node / ulysses_sequence_parallel_size`` for FSDP (rollout TP does not change the
    actor's dp, but it must divide the GPU count). Without dynamic batching the micro-batch sizes must divide the
    per-rank batch. With it, every token budget must hold one full sequence (``max_prompt_length +
    max_response_length``; ``rearrange_micro_batches`` asserts). Returns a one-line summary.
    """
    nnodes = _int_setting(cfg, "trainer.nnodes", 1) or 1
    gpus = _int_setting(cfg, "trainer.n_gpus_per_node", 1) or 1
    train = _int_setting(cfg, "data.train_batch_size")
    mini = _int_setting(cfg, "actor_rollout_ref.actor.ppo_mini_batch_size")
    n = _int_setting(cfg, "actor_rollout_ref.rollout.n", 1) or 1
    if not train or not mini or train < 1 or mini < 1:
        raise PreflightError(f"batch shape: data.train_batch_size={train} and ppo_mini_batch_size={mini} must be >= 1")
    problem = _shape_problem(cfg, nnodes, gpus, mini, train)
    if problem is not None:
        raise PreflightError(f"batch shape: {problem}{_shape_alternatives(cfg, nnodes, gpus, mini, train)}")
    world = nnodes * gpus
    dp, _ = _actor_dp(cfg, world)
    if _get(cfg, "actor_rollout_ref.actor.use_dynamic_bsz", False):
        longest = int(_get(cfg, "data.max_prompt_length", 0) or 0) + int(_get(cfg, "data.max_response_length", 0) or 0)
        budgets = [("actor.ppo_max_token_len_per_gpu", _sequence_parallel(cfg))]
        budgets.append(("rollout.log_prob_max_token_len_per_gpu", _sequence_parallel(cfg)))
        if uses_reference_policy(cfg):
            budgets.append(("ref.log_prob_max_token_len_per_gpu", _sequence_parallel(cfg, "ref")))
        for key, sp in budgets:
            budget = _int_setting(cfg, "actor_rollout_ref." + key, 0) or 0
            if budget * sp < longest:
                raise PreflightError(
                    f"token budget: actor_rollout_ref.{key}={budget} (× ulysses {sp}) is below one full sequence, "
                    f"data.max_prompt_length + max_response_length = {longest}; verl asserts max_token_len >= "
                    f"the sequence length when such a sequence arrives; valid: {key.split('.')[-1]} >= {longest} "
                    f"(verl's examples use 2× = {2 * longest})"
                )
    return f"batch shape {train}·{n} samples per step, mini-batch {mini}·{n} over {dp} data-parallel ranks"


def _parquet_rows(files: Any) -> tuple[int, list[str]]:
    import pyarrow.parquet as pq

    paths = [files] if isinstance(files, str) else list(files or [])
    total = 0
    for item in paths:
        try:
            total += int(pq.ParquetFile(item).metadata.num_rows)
        except Exception as exc:
            raise PreflightError(f"data file {item}: cannot count rows ({exc})") from None
    return total, [str(p) for p in paths]


def check_train_rows(cfg: Mapping[str, Any]) -> str:
    """At least one full training step: verl drops the last incomplete batch, so fewer rows than
    ``data.train_batch_size`` train 0 steps (the run only validates). The prompt-length filter may drop more."""
    rows, paths = _parquet_rows(_get(cfg, "data.train_files"))
    limit = _int_setting(cfg, "data.train_max_samples", -1)
    if limit is not None and limit > 0:
        rows = min(rows, limit)
    batch = _int_setting(cfg, "data.train_batch_size") or 1
    if rows < batch:
        raise PreflightError(
            f"data.train_files {','.join(paths)}: {rows} rows < data.train_batch_size {batch}; verl drops the "
            f"incomplete batch and would train 0 steps; valid: data.train_batch_size <= {rows} (or more data)"
        )
    epochs = _int_setting(cfg, "trainer.total_epochs", 1) or 1
    return f"{rows} train rows: {rows // batch} step(s) per epoch, {rows // batch * epochs} in {epochs} epoch(s)"


def check_checkpoints(cfg: Mapping[str, Any]) -> str:
    """Checkpoint retention is a positive count (or unset = keep all) and, on several nodes, the checkpoint dir
    is absolute (a relative one lands in each node's working directory, splitting the shards)."""
    lines = []
    for key in ("trainer.max_actor_ckpt_to_keep", "trainer.max_critic_ckpt_to_keep"):
        value = _get(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise PreflightError(f"{key}={value!r}: expected a positive number of checkpoints to keep (KEEP_CHECKPOINTS)")
    keep = _get(cfg, "trainer.max_actor_ckpt_to_keep")
    directory = str(_get(cfg, "trainer.default_local_dir", ""))
    nnodes = _int_setting(cfg, "trainer.nnodes", 1) or 1
    if nnodes > 1 and not os.path.isabs(directory):
        raise PreflightError(
            f"trainer.default_local_dir={directory!r} is relative with trainer.nnodes={nnodes}: every node would "
            "write its shards under its own working directory; set CHECKPOINT_DIR to an absolute path on shared storage"
        )
    lines.append(f"checkpoints in {directory}, keeping {keep if keep is not None else 'all'}")
    return "; ".join(lines)


VERL_LOGGERS = (
    "wandb", "mlflow", "swanlab", "vemlp_wandb", "tensorboard", "console", "clearml", "trackio", "file", "rl_insight",
)  # fmt: skip
"""``verl.utils.tracking.Tracking.supported_backend`` of verl 0.9.1."""


def check_loggers(cfg: Mapping[str, Any]) -> str:
    """Every ``trainer.logger`` entry is a backend verl 0.9.1 knows (an unknown one fails after the models load)."""
    loggers = _get(cfg, "trainer.logger", [])
    loggers = [loggers] if isinstance(loggers, str) else list(loggers)
    unknown = [name for name in loggers if name not in VERL_LOGGERS]
    if unknown:
        raise PreflightError(
            f"trainer.logger: unknown logger(s) {unknown} (LOGGERS); verl 0.9.1 supports {list(VERL_LOGGERS)}"
        )
    return f"loggers {loggers}"


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_loopback_host(host: str) -> bool:
    """A loopback or unspecified address, or a name that resolves only to one (e.g. a hostname mapped to
    127.0.1.1 in /etc/hosts). Unresolvable names are not loopback (the reachability check reports them)."""
    import ipaddress
    import socket

    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
        return address.is_loopback or address.is_unspecified
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
    return bool(addresses) and all(a.is_loopback or a.is_unspecified for a in addresses)


def check_judge_urls_for_nodes(urls: str | Sequence[str], nnodes: int) -> None:
    """With several nodes, a loopback judge URL reaches the judge only from the node that serves it: reward
    workers elsewhere would fail every call (visual reward 0 on (N-1)/N of the rows)."""
    from urllib.parse import urlsplit

    if nnodes <= 1:
        return
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    for url in (u.strip() for u in items if u.strip()):
        host = urlsplit(url if "//" in url else "//" + url).hostname or ""
        if is_loopback_host(host):
            raise PreflightError(
                f"judge: VLLM_SERVER_BASE_URL {url} is a loopback address but trainer.nnodes={nnodes}: reward "
                "workers on the other nodes cannot reach it; use the judge host's address (e.g. http://JUDGE_HOST:8000/v1)"
            )


def check_config(cfg: Mapping[str, Any], remote_judge: bool = False) -> list[str]:
    """Every check of the composed config; the report lines."""
    report = [check_batch_shape(cfg), check_train_rows(cfg), check_checkpoints(cfg), check_loggers(cfg)]
    if remote_judge:
        url = _get(cfg, "ray_kwargs.ray_init.runtime_env.env_vars.VLLM_SERVER_BASE_URL") or os.environ.get(
            "VLLM_SERVER_BASE_URL", ""
        )
        check_judge_urls_for_nodes(url, _int_setting(cfg, "trainer.nnodes", 1) or 1)
    return report


# ------------------------------------------------------------------ every node of the Ray cluster


def node_report(
    data: Sequence[str], judge: bool, judge_timeout: float, marker: str | None = None
) -> dict[str, Any]:
    """What one node sees (runs inside a Ray task on that node): its address and worker pid, and the first
    problem with the judge (as this node's workers reach it: the env of its ``ray start`` plus the runtime env),
    the data files or their image paths; whether it sees the launcher's marker file in the checkpoint dir."""
    import socket

    report: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "error": None, "marker": None}
    try:
        import ray

        report["ip"] = ray.util.get_node_ip_address()
    except Exception:
        report["ip"] = report["host"]
    try:
        for path in data:
            if not os.path.isfile(path):
                raise PreflightError(f"data file {path} does not exist on this node (every node needs the same paths)")
            check_images(path, decode=False)
        if judge:
            check_judge(judge_timeout)
    except PreflightError as exc:
        report["error"] = str(exc)
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    if marker is not None:
        report["marker"] = os.path.exists(marker)
    return report


def check_nodes(
    cfg: Mapping[str, Any], judge: bool = False, judge_timeout: float = 10.0, wait_s: float = 300.0
) -> list[str]:
    """Run :func:`node_report` in one Ray task pinned to each alive node of the running cluster.

    Connects to the cluster the run will use (``RAY_ADDRESS``, else the one ``ray start`` runs on this machine)
    with the run's runtime env (the forwarded env vars and the setup hook), so each task sees exactly what that
    node's reward workers will see. Fails when fewer nodes than ``trainer.nnodes`` offer ``n_gpus_per_node`` GPUs,
    or when any node reports a problem. A node that does not see the checkpoint dir's marker file gives a warning.
    """
    import logging
    import uuid

    try:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    except ImportError:
        raise PreflightError("node check: ray is not installed") from None

    nnodes = _int_setting(cfg, "trainer.nnodes", 1) or 1
    gpus = _int_setting(cfg, "trainer.n_gpus_per_node", 1) or 1
    runtime_env = {
        key: value
        for key, value in (_get(cfg, "ray_kwargs.ray_init.runtime_env", {}) or {}).items()
        if value not in (None, {}, [])
    }
    train = _get(cfg, "data.train_files")
    val = _get(cfg, "data.val_files")
    data = [str(p) for files in (train, val) for p in ([files] if isinstance(files, str) else list(files or []))]
    checkpoint_dir = str(_get(cfg, "trainer.default_local_dir", ""))
    marker = None
    if os.path.isabs(checkpoint_dir):
        try:
            marker_dir = Path(checkpoint_dir) / ".perception_r1_node_check"
            marker_dir.mkdir(parents=True, exist_ok=True)
            marker_path = marker_dir / uuid.uuid4().hex
            marker_path.write_text("written by the launcher's node check\n")
            marker = str(marker_path)
        except OSError as exc:
            raise PreflightError(f"checkpoint dir {checkpoint_dir} is not writable ({exc.strerror})") from None
    address = os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise PreflightError(
            f"node check: cannot connect to a Ray cluster at {address} ({type(exc).__name__}: {detail}); start "
            "`ray start --head` on the head node and `ray start --address=HEAD_IP:6379` on the others first (a "
            "cluster with Ray's token authentication also needs RAY_AUTH_MODE=token here)"
        ) from None
    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        device = str(_get(cfg, "trainer.device", "cuda"))
        if device == "cuda":
            gpu_nodes = [n for n in nodes if float(n.get("Resources", {}).get("GPU", 0)) >= gpus]
            if len(gpu_nodes) < nnodes:
                seen = ", ".join(
                    f"{n.get('NodeManagerAddress')}: {int(float(n.get('Resources', {}).get('GPU', 0)))} GPU(s)" for n in nodes
                )
                raise PreflightError(
                    f"node check: trainer.nnodes={nnodes} × n_gpus_per_node={gpus} but the Ray cluster has "
                    f"{len(gpu_nodes)} node(s) with {gpus} GPUs ({seen}); verl would wait for GPUs forever"
                )
        task = ray.remote(num_cpus=0)(node_report)
        refs = [
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                data, judge, judge_timeout, marker
            )
            for node in nodes
        ]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        if pending:
            raise PreflightError(
                f"node check: {len(pending)} of {len(refs)} node(s) did not answer within {wait_s:.0f} s"
            )
        reports = ray.get(refs)
    finally:
        ray.shutdown()
        if marker is not None:
            with contextlib.suppress(OSError):
                os.unlink(marker)
    failed = [r for r in reports if r["error"]]
    if failed:
        first = failed[0]
        raise PreflightError(
            f"node {first['ip']}: {first['error']} ({len(failed)} of {len(reports)} node(s) failed the node check)"
        )
    seen = ", ".join(f"{r['ip']} pid {r['pid']}" for r in reports)
    lines = [f"node check: {len(reports)} node(s) ok ({seen})"]
    blind = [r["ip"] for r in reports if r["marker"] is False]
    if blind:
        print(
            f"preflight: warning: node(s) {', '.join(blind)} do not see files written to the checkpoint dir "
            f"{checkpoint_dir}: checkpoint shards will be split across node-local disks (use shared storage to resume)",
            file=sys.stderr,
        )
    return lines


# ------------------------------------------------------------------ CLI


def run(args: argparse.Namespace) -> list[str]:
    """Run every check; return the lines to report on success."""
    report = []
    settings = check_overrides(args.overrides)
    if settings:
        report.append(f"reward settings {settings}")
    for path in args.data:
        rows = check_data(path, require_images=not args.no_images)
        line = f"data {path}: {rows} rows"
        if not args.no_images:
            counts = check_images(path)
            line += ", images " + ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
        report.append(line)
    if args.judge:
        report.append(f"judge {check_judge(args.judge_timeout)}")
    if args.config:
        cfg = load_config(args.config)
        report.extend(check_config(cfg, remote_judge=args.remote_judge))
        if args.nodes and not args.dry_run:
            report.extend(check_nodes(cfg, judge=args.remote_judge, judge_timeout=args.judge_timeout))
    if args.dry_run and args.config:
        if args.nodes:
            report.append("DRY_RUN=1: node check skipped")
    elif args.dry_run:
        report.append("DRY_RUN=1: GPU check skipped")
    elif args.backend == "cpu":
        report.append(f"BACKEND=cpu: verl on the host CPU with {args.gpus or 1} logical GPU(s)")
    elif args.gpus:
        report.append(f"{check_gpus(args.gpus)} GPU(s)")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m perception_r1.verl_plugin.preflight", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", action="append", default=[], metavar="PARQUET", help="a verl parquet file (repeat)")
    parser.add_argument("--no-images", action="store_true", help="text-only data: no 'images' column required")
    parser.add_argument("--judge", action="store_true", help="check the judge from VLLM_SERVER_* env vars")
    parser.add_argument("--judge-timeout", type=float, default=10.0, help="seconds per judge replica (default 10)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs this node must have")
    parser.add_argument("--dry-run", action="store_true", help="skip the GPU check (DRY_RUN=1)")
    parser.add_argument(
        "--backend", choices=("gpu", "cpu"), default="gpu", help="cpu: no GPU check (BACKEND=cpu launchers)"
    )
    parser.add_argument("--config", metavar="YAML", help="check the composed verl config (main_ppo ... --cfg job)")
    parser.add_argument(
        "--remote-judge",
        action="store_true",
        help="with --config: the run uses the judge (no loopback URL on several nodes; judged from every node)",
    )
    parser.add_argument(
        "--nodes", action="store_true", help="with --config: run the node check in a Ray task on every node"
    )
    parser.add_argument("overrides", nargs="*", help="the hydra overrides of the run (after --)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except PreflightError as exc:
        print(f"preflight: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("preflight: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # still one line: the launcher must never show a traceback
        print(f"preflight: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"preflight: ok: {'; '.join(report)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
