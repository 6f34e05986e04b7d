"""Perception benchmarks (RefCOCO/+/g, PixMo-Count, PageOCR, COCO detection) from the verl parquet the
``perception-r1 data …`` builders write for a validation split: the same prompt, images and ground truth as
training, so a checkpoint is asked exactly what it was trained to answer. Scored by
:mod:`perception_r1.eval.perception_metrics` (see :func:`perception_r1.eval.reasoning_scoring.score_perception`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import BenchmarkFormatError, BenchmarkItem, image_ref, require

FILES = ("*.parquet",)
PERCEPTION = {
    "refcoco": "refcoco",
    "pixmo_count": "pixmo_count",
    "pageocr": "pageocr",
    "coco_detection": "coco_detection",
}


def _item_id(where: str) -> str:
    # builders key their rows differently (ref ids, page ids, image ids, several sentences per ref): the row's
    # position in the file is the one id that is always unique and stable for a given parquet file
    return str(int(where.rsplit(" ", 1)[-1]) - 1)


def make_parser(name: str) -> Any:
    """A row parser for perception benchmark ``name`` (its ``data_source``)."""

    def parse_row(row: dict[str, Any], where: str, root: Path | None, require_images: bool) -> BenchmarkItem:
        data_source = require(row, "data_source", where)
        if data_source != PERCEPTION[name]:
            raise BenchmarkFormatError(f"{where}: field 'data_source' is {data_source!r}, expected {name!r}")
        messages = require(row, "prompt", where)
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
            raise BenchmarkFormatError(f"{where}: field 'prompt' must be a list of chat messages")
        reward_model = require(row, "reward_model", where)
        if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
            raise BenchmarkFormatError(f"{where}: missing field 'reward_model.ground_truth'")
        images = []
        for i, entry in enumerate(row.get("images") or []):
            ref = image_ref(entry, root, where, f"images[{i}]")
            if ref is not None:
                images.append(ref)
        if not images and require_images:
            raise BenchmarkFormatError(f"{where}: missing field 'images'")
        ground_truth = reward_model["ground_truth"]
        extra_info = dict(row.get("extra_info") or {})
        user_text = "\n".join(str(m["content"]) for m in messages if m.get("role") == "user")
        return BenchmarkItem(
            id=_item_id(where),
            benchmark=name,
            prompt=user_text.replace("<image>", "").strip(),
            answer=json.dumps(ground_truth, sort_keys=True) if not isinstance(ground_truth, str) else ground_truth,
            answer_type="text",
            images=images,
            meta={
                "messages": messages,
                "ground_truth": ground_truth,
                "extra_info": extra_info,
            },
        )

    return parse_row
