"""Load built parquets through verl's own ``RLHFDataset`` and run its vision path, on the GPU *and* the CPU stack.

Why: verl's image path (``RLHFDataset._process_multi_modal_info`` and the overlong-prompt filter) imports
``qwen_vl_utils``, which imports torchvision; the CPU test stack has no working torchvision (the PyPI wheels need
``libtorch_cuda.so``). With ``qwen_vl_utils`` importable these helpers run verl's own code. Without it they do
exactly what ``qwen_vl_utils.fetch_image`` does to each image entry (RGB conversion, then a smart resize within
the entry's ``min_pixels``/``max_pixels``, or qwen_vl_utils' defaults when the row sets none) using transformers'
implementation of the same resize, so tests check the same images, prompts and ``<|image_pad|>`` runs either way.
"""

from __future__ import annotations

import base64
import os
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image

try:
    import qwen_vl_utils  # noqa: F401  (imports torchvision)

    HAVE_QWEN_VL_UTILS = True
except ImportError:
    HAVE_QWEN_VL_UTILS = False

# Qwen2-VL / Qwen2.5-VL special-token ids (the real vocabulary, see perception_r1.testing.qwen_processor).
IMAGE_PAD_ID, VISION_START_ID, VISION_END_ID = 151655, 151652, 151653
# qwen_vl_utils' (0.0.14) defaults: each image keeps between 4 and 16384 merged tokens unless the row says otherwise.
SPATIAL_MERGE_SIZE = 2
IMAGE_MIN_TOKEN_NUM = 4
IMAGE_MAX_TOKEN_NUM = 16384

__all__ = [
    "HAVE_QWEN_VL_UTILS",
    "IMAGE_PAD_ID",
    "VISION_END_ID",
    "VISION_START_ID",
    "fetch_image",
    "image_pad_runs",
    "load_rlhf_dataset",
    "vision_inputs",
]


def load_rlhf_dataset(
    path: str | os.PathLike[str], processor: Any, cache_dir: str | os.PathLike[str], max_prompt_length: int = 4096
) -> Any:
    """verl's ``RLHFDataset`` over one parquet (``prompt`` / ``images`` columns), as a training run configures it.

    The overlong-prompt filter runs only where ``qwen_vl_utils`` imports: without it verl's filter would
    *silently drop every image row*, so on the CPU stack it is off (tests then assert the row count themselves).
    """
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "image_key": "images",
            "max_prompt_length": max_prompt_length,
            "filter_overlong_prompts": HAVE_QWEN_VL_UTILS,
            "filter_overlong_prompts_workers": 1,
            "cache_dir": str(cache_dir),
        }
    )
    return RLHFDataset(str(path), processor.tokenizer, config, processor=processor)


def image_pad_runs(ids: list[int]) -> list[int]:
    """Lengths of the ``<|image_pad|>`` runs in ``ids``, each checked to sit between vision start and end tokens.

    Raises AssertionError when a run is not closed by ``<|vision_end|>`` or a pad token sits outside a run.
    """
    runs, i = [], 0
    while i < len(ids):
        if ids[i] == VISION_START_ID:
            j = i + 1
            while j < len(ids) and ids[j] == IMAGE_PAD_ID:
                j += 1
            if j >= len(ids) or ids[j] != VISION_END_ID:
                raise AssertionError(f"<|vision_start|> at token {i} is not closed by <|vision_end|> after its pads")
            runs.append(j - i - 1)
            i = j
        i += 1
    if ids.count(IMAGE_PAD_ID) != sum(runs):
        raise AssertionError(f"{ids.count(IMAGE_PAD_ID)} <|image_pad|> tokens but {sum(runs)} inside vision runs")
    return runs


def _open_image(source: Any) -> Image.Image:
    """The image an entry's ``image``/``image_url`` value names, read the ways ``qwen_vl_utils`` accepts (no HTTP)."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise ValueError(f"image entry: expected a PIL image, a path or a data URL, got {type(source).__name__}")
    if source.startswith(("http://", "https://")):
        raise ValueError(f"image entry: {source!r} is a URL; tests have no network, store the bytes or a path")
    if source.startswith("file://"):
        return Image.open(source[len("file://") :])
    if source.startswith("data:image"):
        if "base64," not in source:
            raise ValueError("image entry: data URL without base64 payload")
        return Image.open(BytesIO(base64.b64decode(source.split("base64,", 1)[1])))
    return Image.open(Path(source))


def _to_rgb(image: Image.Image) -> Image.Image:
    """As ``qwen_vl_utils.to_rgb``: RGBA is flattened onto white, every other mode converted to RGB."""
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def fetch_image(entry: dict[str, Any], image_patch_size: int = 14) -> Image.Image:
    """One content entry's image as ``qwen_vl_utils.fetch_image`` returns it: RGB, smart-resized for the model.

    Bounds come from the entry (``min_pixels``/``max_pixels``, a missing or null one taking qwen_vl_utils'
    default of 4 / 16384 merged tokens) or ``resized_height``/``resized_width`` when both are set; the resize
    itself is transformers' ``smart_resize`` (the same algorithm) and PIL's default ``Image.resize``.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    if "image" in entry:
        source = entry["image"]
    elif "image_url" in entry:
        source = entry["image_url"]
    else:
        raise ValueError(f"image entry: needs 'image' or 'image_url', got keys {sorted(entry)}")
    image = _to_rgb(_open_image(source))
    factor = image_patch_size * SPATIAL_MERGE_SIZE
    default_min, default_max = IMAGE_MIN_TOKEN_NUM * factor**2, IMAGE_MAX_TOKEN_NUM * factor**2
    if "resized_height" in entry and "resized_width" in entry:
        height, width = entry["resized_height"], entry["resized_width"]
        min_pixels, max_pixels = default_min, default_max
    else:
        width, height = image.size
        min_pixels = entry.get("min_pixels") if entry.get("min_pixels") is not None else default_min
        max_pixels = entry.get("max_pixels") if entry.get("max_pixels") is not None else default_max
    if max_pixels < min_pixels:
        raise ValueError(f"image entry: max_pixels {max_pixels} is below min_pixels {min_pixels}")
    resized_height, resized_width = smart_resize(
        height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return image.resize((resized_width, resized_height))


def vision_inputs(dataset: Any, item: dict[str, Any], processor: Any) -> tuple[list[Image.Image], str, Any]:
    """What verl's agent loop does with a dataset item: extract the images, render the template, run the processor.

    Returns ``(images, rendered_prompt, processor_outputs)``. With ``qwen_vl_utils`` importable the images come
    from verl's own ``_process_multi_modal_info``; otherwise from :func:`fetch_image` on each image entry of
    ``item["raw_prompt"]``, in message order (what ``qwen_vl_utils.process_vision_info`` does for images).
    """
    messages = item["raw_prompt"]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if HAVE_QWEN_VL_UTILS:
        images, _, _ = dataset._process_multi_modal_info(messages, dataset.image_patch_size, dataset.config)
        images = list(images or [])
    else:
        entries = [
            c
            for m in messages
            if isinstance(m.get("content"), list)
            for c in m["content"]
            if isinstance(c, dict) and c.get("type") in ("image", "image_url")
        ]
        images = [fetch_image(entry, dataset.image_patch_size) for entry in entries]
    inputs = processor(text=[text], images=images or None, return_tensors="pt")
    return images, text, inputs
