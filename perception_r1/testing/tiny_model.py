"""A tiny randomly initialised Qwen2-VL / Qwen2.5-VL with the real Qwen vocabulary and processor, for CPU training.

Why: the trainer path (rollout -> reward -> GRPO -> actor update -> weight sync -> checkpoint) must run in CI and on
any laptop, where no checkpoint can be downloaded. The architecture is Qwen2-VL's (M-RoPE, the vision tower with
2x2 patch merging, the real special-token ids), shrunk to ~10M parameters, almost all of them the 151,936-row
embedding (tied to the output head). The tokenizer, chat template and image processor are the real ones built by
:mod:`perception_r1.testing.qwen_processor`, so prompts, ``<|image_pad|>`` runs and decoding are exactly what a
real Qwen2-VL checkpoint sees; only the weights are random.

    python -m perception_r1.testing.tiny_model outputs/demo/model [--family qwen2_5_vl]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from .qwen_processor import save_qwen2_5_vl_processor, save_qwen2_vl_processor

__all__ = ["TINY_QWEN2_VL", "TINY_VISION", "save_tiny_qwen2_vl"]

TINY_QWEN2_VL = {  # the language model, shared by both families
    "text": {
        "vocab_size": 151936,  # Qwen2-VL's padded vocabulary size (151,657 real tokens)
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        # M-RoPE sections (temporal, height, width) must sum to head_dim / 2 = 8
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "tie_word_embeddings": True,
    },
}
TINY_VISION = {
    "qwen2_vl": {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
    # Qwen2.5-VL's tower: windowed attention with full attention in the listed blocks, SwiGLU MLP
    "qwen2_5_vl": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "window_size": 112,
        "fullatt_block_indexes": [1],
    },
}
_STAMP = ".perception_r1_tiny_model"
_VERSION = 2


def save_tiny_qwen2_vl(directory: str | os.PathLike[str], seed: int = 0, family: str = "qwen2_vl") -> Path:
    """Write (or reuse) a tiny random Qwen2-VL (``family="qwen2_5_vl"``: Qwen2.5-VL) checkpoint at ``directory``.

    Idempotent and atomic: a complete directory built with the same ``seed`` is reused; otherwise the model is
    built in a sibling temporary directory and renamed into place, so an interrupted build never looks complete.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    if family not in TINY_VISION:
        raise ValueError(f"family: expected one of {sorted(TINY_VISION)}, got {family!r}")
    config_cls, model_cls, save_processor = {
        "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration, save_qwen2_vl_processor),
        "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, save_qwen2_5_vl_processor),
    }[family]
    target = Path(directory)
    stamp = {"version": _VERSION, "seed": seed, "family": family}
    marker = target / _STAMP
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == stamp:
                return target
        except (OSError, ValueError):
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        processor_dir = save_processor(tmp / "processor")
        config = config_cls(
            text_config=dict(TINY_QWEN2_VL["text"]),
            vision_config=dict(TINY_VISION[family]),
            image_token_id=151655,
            video_token_id=151656,
            vision_start_token_id=151652,
            vision_end_token_id=151653,
            tie_word_embeddings=True,
        )
        config.architectures = [model_cls.__name__]
        torch.manual_seed(seed)
        model = model_cls(config)
        model.save_pretrained(tmp, safe_serialization=True)
        GenerationConfig(
            bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643, do_sample=False
        ).save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.json", "preprocessor_config.json"):
            shutil.copy(processor_dir / name, tmp / name)
        shutil.rmtree(processor_dir)
        (tmp / _STAMP).write_text(json.dumps(stamp), encoding="utf-8")
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to write the model (reused when already complete)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument("--family", choices=sorted(TINY_VISION), default="qwen2_vl", help="model family")
    args = parser.parse_args(argv)
    path = save_tiny_qwen2_vl(args.directory, seed=args.seed, family=args.family)
    print(path)


if __name__ == "__main__":
    main()
