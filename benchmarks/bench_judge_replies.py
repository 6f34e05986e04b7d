"""Benchmark: judge replies in free vs constrained (vLLM ``structured_outputs``) mode, on the scripted server.

The same GRPO-like geo3k batch (2-6 visual annotations per row) is judged twice by a scripted judge with the
free-text habits of LLM judges (``chatty_judge``: a preamble line, ``1.0``, an explanation or a reasoning paragraph
per tag, ``yes``/``no``, unclosed tags): once by a server that ignores ``structured_outputs`` (an old vLLM: free
text, parsed leniently) and once by one that honours the verdict regex (vLLM >= 0.12). Reported per mode: reply
tokens per row (counted with the real Qwen2.5 tokenizer), replies with an unreadable verdict, truncated replies,
and rows whose read verdicts differ from what the judge meant (a silent change of the reward).

    python benchmarks/bench_judge_replies.py [--prompts 128] [--group 8] [--seed 0]

What it measures is our reading of these scripted habits, not any real model's habit frequencies.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import grpo_batch, machine_note, table


def qwen_tokenizer():
    from transformers import AutoTokenizer

    from perception_r1.testing.qwen_processor import save_qwen2_5_vl_processor

    directory = Path(tempfile.mkdtemp(prefix="pr1-qwen-"))
    return AutoTokenizer.from_pretrained(save_qwen2_5_vl_processor(directory / "qwen2_5_vl"))


async def _judge_all(base_url: str, rows: list[dict], constrained: bool, concurrency: int) -> list:
    from perception_r1.judge.client import JudgeClient, JudgeSettings
    from perception_r1.judge.visual import judge_visual

    client = JudgeClient(JudgeSettings(base_urls=(base_url,), model="judge", max_concurrency=concurrency))
    try:
        return await asyncio.gather(
            *(
                judge_visual(client, r["extra_info"]["visual_annotations"], r["response"], constrained=constrained)
                for r in rows
            )
        )
    finally:
        await client.aclose()


def measure(rows: list[dict], constrained: bool, seed: int, tokenizer, concurrency: int) -> dict:
    from perception_r1.testing import OpenAITestServer
    from perception_r1.testing.openai_server import chatty_judge, parse_judge_request, substring_verdicts

    server = OpenAITestServer(models=["judge"], responder=chatty_judge(seed=seed))
    if not constrained:
        server.version, server.structured_outputs = "0.11.0", False
    with server:
        verdicts = asyncio.run(_judge_all(server.base_url, rows, constrained, concurrency))
        log = list(server.log)
    assert len(log) == len(rows), "one request per row (no retries)"
    tokens = [len(tokenizer.encode(record.text or "", add_special_tokens=False)) for record in log]
    wrong = 0
    for row, verdict in zip(rows, verdicts, strict=True):
        meant = substring_verdicts(row["extra_info"]["visual_annotations"], row["response"])
        wrong += verdict.verdicts != meant
    annotations = [len(r["extra_info"]["visual_annotations"]) for r in rows]
    assert all(parse_judge_request(r.body) is not None and bool(r.constrained) is constrained for r in log), (
        "every request was a judge request in the expected mode"
    )
    return {
        "mode": "constrained (structured_outputs regex)" if constrained else "free text, parsed leniently",
        "rows": len(rows),
        "annotations_per_row": statistics.mean(annotations),
        "reply_tokens_per_row": statistics.mean(tokens),
        "reply_tokens_p95": sorted(tokens)[int(0.95 * (len(tokens) - 1))],
        "unparseable_replies": sum(v.unparsed > 0 for v in verdicts),
        "truncated_replies": sum(v.truncated for v in verdicts),
        "rows_with_changed_verdicts": wrong,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    rows = grpo_batch(prompts=args.prompts, group=args.group, seed=args.seed, annotated=True)
    tokenizer = qwen_tokenizer()
    results = [measure(rows, constrained, args.seed, tokenizer, args.concurrency) for constrained in (False, True)]
    headers = [
        "mode",
        "rows",
        "annotations/row",
        "reply tokens/row",
        "p95",
        "unparseable replies",
        "truncated",
        "rows with changed verdicts",
    ]
    print(
        table(
            headers,
            [
                [
                    r["mode"],
                    r["rows"],
                    f"{r['annotations_per_row']:.2f}",
                    f"{r['reply_tokens_per_row']:.1f}",
                    r["reply_tokens_p95"],
                    r["unparseable_replies"],
                    r["truncated_replies"],
                    r["rows_with_changed_verdicts"],
                ]
                for r in results
            ],
        )
    )
    print(machine_note())


if __name__ == "__main__":
    main()
