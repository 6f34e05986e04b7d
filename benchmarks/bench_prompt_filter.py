"""Startup cost of verl's prompt-length filter on COCO detection data; prints a Markdown table.

verl 0.9.1's ``RLHFDataset`` (``data.filter_overlong_prompts=True``) computes every row's prompt length before the
first step: it renders the chat template, opens and resizes every image (``qwen_vl_utils.fetch_image`` within the
row's ``min_pixels``/``max_pixels``) and runs the Qwen2.5-VL processor, through ``datasets.filter(num_proc=
data.filter_overlong_prompts_workers)``. This runs the same per-row work on the real COCO images of
``shared/data`` (built by ``perception-r1 data coco-detection`` with the detection launcher's pixel limits, image
bytes embedded) through ``datasets.filter`` with 1 and 2 processes, and scales the per-row time to COCO train2017.

The image resize is ``perception_r1.testing.verl_dataset.fetch_image`` (the same resize as ``qwen_vl_utils``, which
needs torchvision, absent from the CPU stack); the processor is a real-vocabulary Qwen2.5-VL processor.

    python benchmarks/bench_prompt_filter.py [--rows 180] [--repeats 1] [--shared-data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COCO_TRAIN2017_ROWS = 117_266  # train2017 images with at least one non-crowd box (one detection row each)


def _prompt_length(row: dict, processor) -> int:
    """One row's prompt tokens as verl's filter counts them (template + vision tokens of the resized image)."""
    from perception_r1.testing.verl_dataset import fetch_image

    text = row["prompt"][0]["content"]
    content = [{"type": "image"}, {"type": "text", "text": text.replace("<image>", "", 1)}]
    messages = [{"role": "user", "content": content}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = [fetch_image(_entry(entry)) for entry in row["images"]]
    return len(processor(text=[rendered], images=images, return_tensors="np")["input_ids"][0])


def _entry(entry: dict) -> dict:
    """The content entry verl hands to ``fetch_image``: the PIL image of the embedded bytes plus the limits."""
    from io import BytesIO

    from PIL import Image

    out = {k: v for k, v in entry.items() if k != "bytes" and v is not None}
    out["image"] = Image.open(BytesIO(entry["bytes"]))
    return out


_PROCESSOR = None


def _keep(row: dict, processor_dir: str, max_prompt_length: int) -> bool:
    global _PROCESSOR
    if _PROCESSOR is None:  # once per datasets worker process, as verl's processor is pickled to each
        from perception_r1.testing.qwen_processor import load_qwen_vl_processor

        _PROCESSOR = load_qwen_vl_processor(processor_dir)
    return _prompt_length(row, _PROCESSOR) <= max_prompt_length


def run(repeats: int = 1, rows: int = 180, shared_data: Path | None = None, workers: tuple[int, ...] = (1, 2)) -> dict:
    """Time the filter over ``rows`` rows with each worker count (median of ``repeats``); the Markdown table."""
    import statistics

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from perception_r1.cli import main as cli
    from perception_r1.testing.qwen_processor import save_qwen2_5_vl_processor

    shared = Path(shared_data or REPO.parent / "shared" / "data")
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "coco.parquet"
        argv = ["data", "coco-detection", "--annotations", str(shared / "coco" / "instances.json"),
                "--min-pixels", "3136", "--max-pixels", "1003520", "--output", str(built)]  # fmt: skip
        assert cli(argv) == 0
        table = pq.read_table(built)
        repeated = pa.concat_tables([table] * (rows // table.num_rows + 1)).slice(0, rows)
        processor_dir = str(save_qwen2_5_vl_processor(Path(tmp) / "processor"))
        dataset = datasets.Dataset(repeated)
        results = []
        for num_proc in workers:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                kept = dataset.filter(
                    _keep, fn_kwargs={"processor_dir": processor_dir, "max_prompt_length": 2048},
                    num_proc=num_proc if num_proc > 1 else None, load_from_cache_file=False,
                )  # fmt: skip
                times.append(time.perf_counter() - start)
                assert len(kept) == rows  # COCO images at <= 1003520 pixels: ~400 image tokens, well under 2048
            results.append((num_proc, statistics.median(times)))
    per_row_ms = results[0][1] / rows * 1000
    lines = [
        f"rows: {rows} (the {table.num_rows} real COCO images of shared/data, repeated; embedded bytes, "
        f"3136..1003520 pixels), CPUs here: {len(os.sched_getaffinity(0))}",
        "",
        "| filter workers | seconds | ms per row | rows/s | COCO train2017 (117,266 rows), same CPUs |",
        "|---|---|---|---|---|",
    ]
    for num_proc, seconds in results:
        rate = rows / seconds
        lines.append(
            f"| {num_proc} | {seconds:.1f} | {seconds / rows * 1000:.1f} | {rate:.0f} | "
            f"{COCO_TRAIN2017_ROWS / rate / 60:.0f} min |"
        )
    lines.append("")
    lines.append(
        f"Scaled (ideal: datasets shards rows evenly, each worker costs one process): 8 workers ≈ "
        f"{COCO_TRAIN2017_ROWS * per_row_ms / 8 / 1000 / 60:.0f} min, 32 workers ≈ "
        f"{COCO_TRAIN2017_ROWS * per_row_ms / 32 / 1000 / 60:.1f} min, from {per_row_ms:.1f} ms per row on one of "
        "these cores."
    )
    return {"rows": rows, "results": results, "per_row_ms": per_row_ms, "table": "\n".join(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=180)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--shared-data", type=Path, default=None)
    args = parser.parse_args()
    print(run(args.repeats, args.rows, args.shared_data)["table"])


if __name__ == "__main__":
    main()
