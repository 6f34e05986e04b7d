"""The Qwen-VL processor and image fetching without torchvision (the CPU stack has none that works).

transformers 5 needs torchvision for every Qwen-VL ``AutoProcessor`` (its video processors) and ``qwen_vl_utils``
imports it at module level, while the only torchvision wheels on PyPI beside the CPU torch need CUDA libraries.
So on the CPU platform:

- verl's ``hf_processor`` (bound in ``verl.workers.config.model`` and the model merger) is answered by
  :func:`load_processor`: the project's own real-vocabulary loader (``perception_r1.testing.qwen_processor``,
  which assembles the same processor class from the directory's files) for Qwen2-VL / Qwen2.5-VL, verl's own
  function for everything else;
- where ``import qwen_vl_utils`` fails, :func:`install_qwen_vl_utils_fallback` registers a module of that name
  with ``fetch_image`` / ``process_vision_info`` for images (the same smart resize,
  ``perception_r1.testing.verl_dataset.fetch_image``) and a clear error for videos. The installed package is
  never touched; where it imports (torchvision present), it is used as is.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

_QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")


def _model_type(path: Any) -> str | None:
    try:
        return json.loads((Path(str(path)) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, TypeError):
        return None


def load_processor(name_or_path: Any, original: Any = None, **kwargs: Any) -> Any:
    """The processor verl's ``hf_processor`` would return for ``name_or_path``, without needing torchvision."""
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available() and _model_type(name_or_path) in _QWEN_VL_TYPES:
        from ...testing.qwen_processor import load_qwen_vl_processor

        return load_qwen_vl_processor(name_or_path)
    if original is None:
        from verl.utils.tokenizer import hf_processor as original
    return original(name_or_path, **kwargs)


def patch_hf_processor(module: types.ModuleType) -> None:
    """Rebind ``module.hf_processor`` (a ``from verl.utils import hf_processor`` import) to :func:`load_processor`."""
    original = getattr(module, "hf_processor", None)
    if original is None or getattr(original, "__perception_r1__", False):
        return

    def hf_processor(name_or_path: Any, **kwargs: Any) -> Any:
        return load_processor(name_or_path, original=original, **kwargs)

    hf_processor.__perception_r1__ = True  # type: ignore[attr-defined]
    module.hf_processor = hf_processor


def _fetch_image(ele: dict, image_patch_size: int = 14) -> Any:
    from ...testing.verl_dataset import fetch_image

    return fetch_image(ele, image_patch_size)


def _process_vision_info(
    conversations: Any,
    return_video_kwargs: bool = False,
    return_video_metadata: bool = False,
    image_patch_size: int = 14,
) -> Any:
    if conversations and isinstance(conversations[0], dict):
        conversations = [conversations]
    images = []
    for conversation in conversations:
        for message in conversation:
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for entry in content:
                if not isinstance(entry, dict):
                    continue
                if "image" in entry or "image_url" in entry or entry.get("type") in ("image", "image_url"):
                    images.append(_fetch_image(entry, image_patch_size))
                elif "video" in entry or entry.get("type") == "video":
                    raise NotImplementedError(
                        "videos need torchvision (qwen_vl_utils); the CPU backend handles images only"
                    )
    images = images or None
    if return_video_kwargs:
        return images, None, {"do_sample_frames": False}
    return images, None


def install_qwen_vl_utils_fallback() -> bool:
    """Serve ``import qwen_vl_utils`` for images when the real one cannot import; True if the fallback is in use."""
    try:
        import qwen_vl_utils  # noqa: F401

        return False
    except ImportError:
        pass
    module = types.ModuleType("qwen_vl_utils")
    module.__doc__ = "perception_r1's image-only stand-in for qwen_vl_utils (no torchvision on this machine)."
    module.fetch_image = _fetch_image
    module.process_vision_info = _process_vision_info
    sys.modules["qwen_vl_utils"] = module
    return True
