"""``perception-r1 eval run`` (benchmark inference, resumable) and ``perception-r1 eval score`` (answer
extraction and official scoring, with the judge as a fallback)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..commands.common import (
    add_judge_options,
    add_set_option,
    atomic_writer,
    judge_settings_from_args,
    progress,
    settings_from_args,
    write_jsonl_atomic,
)
from ..errors import CommandError
from ..judge.client import JudgeClient, JudgeSettings, JudgeUnavailable
from ..rewards.registry import parse_set_options
from .benchmarks import BENCHMARKS, PERCEPTION, BenchmarkFormatError, BenchmarkItem, load_benchmark
from .inference import (
    DEFAULT_TEMPLATE,
    ResumeMismatch,
    SamplingSettings,
    read_predictions,
    run_server_sync,
    run_vllm_offline,
    vllm_available,
)

logger = logging.getLogger(__name__)

ENV_EVAL_BASE_URL = "EVAL_BASE_URL"
ENV_EVAL_MODEL = "EVAL_MODEL"
ENV_EVAL_API_KEY = "EVAL_API_KEY"


def register(subparsers: Any) -> None:
    """Add ``eval run`` and ``eval score``."""
    run_parser = subparsers.add_parser(
        "run",
        help="run a checkpoint on a benchmark (resumable JSONL of responses)",
        description="Ask the served checkpoint (or vLLM offline) every benchmark question not yet in --output and "
        "append each response as it arrives. Rerun the same command to resume after an interruption.",
    )
    _add_data_options(run_parser)
    run_parser.add_argument("--output", required=True, help="responses JSONL (appended; resumes)")
    run_parser.add_argument(
        "--engine", choices=("server", "vllm"), default="server", help="a served checkpoint, or vLLM offline (GPU)"
    )
    server = run_parser.add_argument_group(
        f"server engine (env-var fallbacks: {ENV_EVAL_BASE_URL}, {ENV_EVAL_MODEL}, {ENV_EVAL_API_KEY})"
    )
    server.add_argument("--base-url", help="OpenAI-compatible base URL(s) of the served checkpoint, comma-separated")
    server.add_argument("--model", help="served model name (server) or model path (vllm)")
    server.add_argument("--api-key", help=f"API key (prefer the {ENV_EVAL_API_KEY} env var: argv is visible to ps)")
    server.add_argument("--max-concurrency", type=int, default=32, help="requests in flight")
    server.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    server.add_argument("--max-retries", type=int, default=3, help="retries after the first attempt")
    server.add_argument(
        "--max-consecutive-failures", type=int, default=20, help="stop after this many failures in a row"
    )
    offline = run_parser.add_argument_group("vllm engine")
    offline.add_argument("--batch-size", type=int, default=64, help="prompts per LLM.chat call")
    offline.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per model replica")
    offline.add_argument("--max-model-len", type=int, default=None, help="vLLM max_model_len (default: the model's)")
    sampling = run_parser.add_argument_group("sampling (greedy by default)")
    sampling.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    sampling.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling top_p")
    sampling.add_argument("--max-tokens", type=int, default=4096, help="max_tokens per response")
    sampling.add_argument("--seed", type=int, default=None, help="sampling seed (default: none sent)")
    sampling.add_argument(
        "--sampling-extra", nargs="+", default=[], metavar="KEY=VALUE", help="extra sampling params, e.g. top_k=20"
    )
    prompt = run_parser.add_argument_group("prompt")
    prompt.add_argument("--template", default=None, help="prompt template with {question} (default: think/answer)")
    prompt.add_argument("--template-file", default=None, help="read the template from a file")
    prompt.add_argument("--system-prompt", default=None, help="system message (default: none)")
    run_parser.set_defaults(func=run_command)

    score_parser = subparsers.add_parser(
        "score",
        help="extract answers and score a responses file with the benchmark's official rules",
        description="Rules read the final answer first (boxed value, option letter, number with units); the judge "
        "(when configured) reads only what the rules could not. Prints the summary; --json prints it as JSON.",
    )
    _add_data_options(score_parser)
    score_parser.add_argument("--predictions", required=True, help="responses JSONL from `eval run`")
    score_parser.add_argument("--output", help="per-item JSONL {id, correct, extracted, method, gold} (atomic)")
    score_parser.add_argument("--summary", help="summary JSON file (atomic)")
    score_parser.add_argument("--checkpoint", default=None, help="label stored in the summary (default: file stem)")
    score_parser.add_argument("--no-judge", action="store_true", help="rules only, even if a judge is configured")
    score_parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    perception = score_parser.add_argument_group(
        "perception benchmarks (refcoco, pixmo_count, pageocr, coco_detection)"
    )
    perception.add_argument("--annotations", help="coco_detection: the COCO instances JSON the parquet was built from")
    perception.add_argument(
        "--score-mode",
        choices=("constant", "order"),
        default="constant",
        help="coco_detection box scores: 1.0 each (default) or 1/(rank+1) by output order",
    )
    add_set_option(perception)
    add_judge_options(score_parser)
    score_parser.set_defaults(func=score_command)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="benchmark file or the folder holding it (public layout)")
    source.add_argument("--hub", action="store_true", help="download from the Hugging Face hub (needs network)")
    parser.add_argument("--hub-config", default=None, help="hub config (e.g. 'vision' for MMMU-Pro)")
    parser.add_argument("--split", default=None, help="hub split (default: the benchmark's evaluation split)")
    parser.add_argument("--image-root", default=None, help="folder that relative image paths start from")
    parser.add_argument("--limit", type=int, default=None, help="first N items only")
    parser.add_argument(
        "--allow-missing-images", action="store_true", help="accept items whose image field is absent (text only)"
    )


def _load(args: argparse.Namespace, require_images: bool) -> list[BenchmarkItem]:
    try:
        items = load_benchmark(
            args.benchmark,
            args.data,
            image_root=args.image_root,
            hub=args.hub,
            hub_config=args.hub_config,
            split=args.split,
            limit=args.limit,
            require_images=require_images and not args.allow_missing_images,
        )
    except BenchmarkFormatError as exc:
        raise CommandError(str(exc)) from None
    if not items:
        raise CommandError(f"{args.benchmark}: no items loaded")
    return items


def _sampling(args: argparse.Namespace) -> SamplingSettings:
    try:
        extra_raw = parse_set_options(args.sampling_extra)
        extra: dict[str, Any] = {}
        for key, value in extra_raw.items():
            try:
                extra[key] = json.loads(value)
            except json.JSONDecodeError:
                extra[key] = value
        return SamplingSettings(
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            seed=args.seed,
            extra=extra,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _template(args: argparse.Namespace) -> str:
    template = args.template
    if args.template_file:
        try:
            template = Path(args.template_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot read --template-file {args.template_file}: {exc.strerror}") from None
    template = template or DEFAULT_TEMPLATE
    if "{question}" not in template:
        raise CommandError("the prompt template must contain {question}")
    try:
        template.format(question="")
    except (KeyError, IndexError, ValueError) as exc:
        raise CommandError(
            f"the prompt template is not a valid format string ({exc}); write literal braces as {{ }}"
        ) from None
    return template


def run_command(args: argparse.Namespace) -> int:
    """``eval run``: inference with resume; exit 1 when some items failed (rerun to finish them)."""
    items = _load(args, require_images=True)
    sampling = _sampling(args)
    template = _template(args)
    try:
        if args.engine == "vllm":
            if not args.model:
                raise CommandError("--model (a model path or hub id) is required with --engine vllm")
            if not vllm_available():
                raise CommandError("--engine vllm needs vLLM installed (GPU); use --engine server with `vllm serve`")
            engine_args: dict[str, Any] = {"tensor_parallel_size": args.tensor_parallel_size}
            if args.max_model_len:
                engine_args["max_model_len"] = args.max_model_len
            summary = run_vllm_offline(
                items, args.output, args.model, sampling, template, args.system_prompt, args.batch_size, engine_args
            )
        else:
            client = JudgeClient(_server_settings(args))
            try:
                client.preflight_sync()
            except JudgeUnavailable as exc:
                raise CommandError(f"model server: {exc}") from None
            summary = run_server_sync(
                items, args.output, client, sampling, template, args.system_prompt, args.max_consecutive_failures
            )
    except (ResumeMismatch, ValueError) as exc:
        raise CommandError(str(exc)) from None
    rate = summary.written / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    logger.info(
        "%s: %d of %d items done (%d from earlier runs, %d now at %.2f items/s), %d failed -> %s",
        args.benchmark,
        summary.skipped + summary.written,
        summary.total,
        summary.skipped,
        summary.written,
        rate,
        summary.failed,
        args.output,
    )
    if not summary.complete:
        why = "stopped after repeated failures" if summary.aborted else f"{summary.failed} item(s) failed"
        print(f"incomplete: {why}; rerun the same command to resume", file=sys.stderr)
        return 1
    return 0


def _server_settings(args: argparse.Namespace) -> JudgeSettings:
    base_url = args.base_url or os.environ.get(ENV_EVAL_BASE_URL, "")
    if not base_url.strip():
        raise CommandError(f"--base-url (or {ENV_EVAL_BASE_URL}) is required with --engine server")
    model = args.model or os.environ.get(ENV_EVAL_MODEL)
    if not model:
        raise CommandError(f"--model (or {ENV_EVAL_MODEL}) is required: the served model name")
    try:
        return JudgeSettings(
            base_urls=JudgeSettings.split_urls(base_url),
            model=model,
            api_key=args.api_key or os.environ.get(ENV_EVAL_API_KEY) or "EMPTY",
            max_concurrency=args.max_concurrency,
            timeout_s=args.timeout,
            max_retries=args.max_retries,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            role="policy",
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def score_command(args: argparse.Namespace) -> int:
    """``eval score``: extract, judge the unreadable, score; write rows and the summary."""
    items = _load(args, require_images=False)
    try:
        predictions = read_predictions(args.predictions)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.benchmark in PERCEPTION:
        from .reasoning_scoring import score_perception

        try:
            summary, rows = score_perception(
                items, predictions, settings_from_args(args), args.annotations, args.score_mode
            )
        except (ValueError, KeyError, OSError) as exc:
            raise CommandError(f"{args.benchmark}: {exc}") from None
    else:
        judge = None
        if not args.no_judge:
            settings = judge_settings_from_args(args)
            judge = JudgeClient(settings) if settings else None
        summary, rows = score_file(items, predictions, judge)
    summary["checkpoint"] = args.checkpoint or Path(args.predictions).stem
    summary["predictions"] = str(args.predictions)
    if args.output:
        write_jsonl_atomic(args.output, rows)
    if args.summary:
        with atomic_writer(args.summary) as handle:
            json.dump(summary, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(format_summary(summary))
    if summary.get("missing"):
        print(
            f"warning: {summary['missing']} of {summary['n']} items have no prediction in {args.predictions}; "
            "they count as wrong (finish them with `eval run`: it resumes)",
            file=sys.stderr,
        )
    return 0


def score_file(
    items: list[BenchmarkItem], predictions: dict[str, str], judge: JudgeClient | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``predictions`` against ``items`` (judge preflighted first; unreachable -> rules only, with a warning)."""
    from .reasoning_scoring import score_predictions

    if judge is not None:
        try:
            judge.preflight_sync()
        except JudgeUnavailable as exc:
            logger.warning("%s; unreadable answers will count as wrong", exc)
            judge = None

    async def main(bar: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            return await score_predictions(items, predictions, judge, bar.update)
        finally:
            if judge is not None:
                await judge.aclose()

    try:
        with progress(len(predictions), f"scoring {items[0].benchmark}") as bar:
            summary, rows = asyncio.run(main(bar))
    except ValueError as exc:
        raise CommandError(f"{exc}") from None
    summary["judge_used"] = judge is not None
    return summary, rows


COVERAGE_KEYS = ("n", "answered", "missing", "coverage")


def coverage_text(summary: dict[str, Any]) -> str:
    """``coverage 70/304`` (answered items / benchmark items) for a summary line."""
    return f"coverage {summary.get('answered', summary.get('n', 0))}/{summary.get('n', 0)}"


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable summary: accuracy over every item, coverage, extraction paths, We-Math's metrics."""
    if "extraction" not in summary:  # a perception benchmark: its metrics as they are
        shown = {
            k: v
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in COVERAGE_KEYS
        }
        return (
            f"{summary['benchmark']} ({summary.get('checkpoint', '')}): "
            + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
            + f", {coverage_text(summary)}"
        )
    ex = summary["extraction"]
    lines = [
        f"{summary['benchmark']} ({summary.get('checkpoint', '')}): accuracy {summary['accuracy']:.4f} "
        f"({summary['correct']}/{summary['n']}), {coverage_text(summary)}",
        f"answers read by rules {ex['rule']}, by the judge {ex['judge']}, unreadable {ex['none']}",
    ]
    wemath = summary.get("wemath")
    if wemath and wemath.get("groups"):
        rates = wemath["rates"]
        lines.append(
            f"We-Math on {wemath['groups']} groups: score strict {wemath['score_strict']:.4f} / loose "
            f"{wemath['score_loose']:.4f}; IK {rates['IK']:.4f} IG {rates['IG']:.4f} CM {rates['CM_strict']:.4f} "
            f"RM {rates['RM_strict']:.4f} (strict)"
        )
    return "\n".join(lines)
