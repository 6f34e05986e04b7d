"""``perception-r1 annotate``: build visual annotations for your own problems (distil, filter, extract).

See ``docs/annotate_and_calibrate.md``. Output rows feed ``perception-r1 data geo3k`` (plain rows with an
annotation list); a per-row report says what happened to every input row; a SQLite store makes reruns resume.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..annotate import prompts
from ..annotate.pipeline import STAGES, AnnotateConfig, Annotator, ProblemResult, load_problems
from ..annotate.store import StageStore
from ..errors import CommandError
from ..judge.client import JudgeClient, JudgeSettings, JudgeUnavailable
from .common import progress, write_jsonl_atomic

logger = logging.getLogger(__name__)
ENV_PREFIX = "PERCEPTION_R1_"
ROLES = {"distill": "distiller", "extract": "extractor"}
"""What each endpoint is called in errors."""


def _endpoint_options(parser: argparse.ArgumentParser, stage: str, what: str) -> None:
    env = f"{ENV_PREFIX}{stage.upper()}"
    group = parser.add_argument_group(
        f"{stage} endpoint ({what}; env fallbacks {env}_BASE_URL, {env}_MODEL, {env}_API_KEY)"
    )
    group.add_argument(f"--{stage}-base-url", help="OpenAI-compatible base URL(s), comma-separated replicas")
    group.add_argument(f"--{stage}-model", help="served model name")
    group.add_argument(f"--{stage}-api-key", help=f"API key (prefer the {env}_API_KEY env var: argv is visible to ps)")
    group.add_argument(
        f"--{stage}-price-in", type=float, default=0.0, help="USD per 1M prompt tokens (cost accounting)"
    )
    group.add_argument(
        f"--{stage}-price-out", type=float, default=0.0, help="USD per 1M completion tokens (cost accounting)"
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "annotate",
        help="distil CoT solutions, keep correct ones, extract atomic visual annotations",
        description="Rows {id?, problem, answer, image | images} in; rows {id, problem, answer, images, "
        "visual_annotations, provenance} out (for `perception-r1 data geo3k`). Paid calls are stored in a SQLite "
        "store, so rerunning the same command resumes. Bad input rows are reported and skipped.",
    )
    parser.add_argument("--input", required=True, help="problems JSONL")
    parser.add_argument("--output", required=True, help="annotated rows JSONL (written atomically at the end)")
    parser.add_argument("--store", help="resume store (SQLite; default: OUTPUT.store.sqlite)")
    parser.add_argument("--report", help="per-row report JSONL (default: OUTPUT.report.jsonl)")
    parser.add_argument("--image-root", help="folder relative image paths are resolved against (default: input's)")
    parser.add_argument("--limit", type=int, help="only the first N input rows (a quick look)")
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="ask every call again, even those with a valid stored reply (invalid ones are always asked again)",
    )
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    d = AnnotateConfig()
    group = parser.add_argument_group("pipeline")
    group.add_argument("--samples", type=int, default=d.samples, help="trajectories per problem (k)")
    group.add_argument("--temperature", type=float, default=d.distill_temperature, help="distillation temperature")
    group.add_argument("--max-tokens", type=int, default=d.distill_max_tokens, help="distillation max_tokens")
    group.add_argument("--seed", type=int, default=d.seed, help="sample s is requested with seed+s; -1: send none")
    group.add_argument("--distill-prompt", help="user prompt template file ({problem}, {choices} placeholders)")
    group.add_argument("--distill-system", help="system prompt file for distillation")
    group.add_argument("--extract-from", type=int, default=d.extract_from, help="correct trajectories to extract")
    group.add_argument("--max-annotations", type=int, default=d.max_annotations, help="cap per problem")
    group.add_argument("--max-annotation-chars", type=int, default=d.max_annotation_chars, help="longer: dropped")
    group.add_argument("--extract-attempts", type=int, default=d.extract_attempts, help="tries per trajectory")
    group.add_argument("--extract-max-tokens", type=int, default=d.extract_max_tokens, help="extraction max_tokens")
    group.add_argument(
        "--structured-output",
        choices=("json_schema", "guided_json", "json_object", "none"),
        default=d.structured_output,
        help="how extraction asks for JSON (replies are validated either way)",
    )
    group.add_argument("--concurrency", type=int, default=d.concurrency, help="requests in flight per endpoint")
    group.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in seconds")
    group.add_argument("--max-retries", type=int, default=3, help="retries per request (backoff)")
    _endpoint_options(parser, "distill", "a multimodal model: sees the images")
    _endpoint_options(parser, "extract", "a text model; defaults to the distill endpoint")
    parser.set_defaults(func=run)


def _read_text(path: str | None, default: str, what: str) -> str:
    if not path:
        return default
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read the {what} file {path}: {exc.strerror}") from None


def _settings(args: argparse.Namespace, stage: str, fallback: JudgeSettings | None = None) -> JudgeSettings:
    env = f"{ENV_PREFIX}{stage.upper()}"
    url = getattr(args, f"{stage}_base_url") or os.environ.get(f"{env}_BASE_URL")
    model = getattr(args, f"{stage}_model") or os.environ.get(f"{env}_MODEL")
    key = getattr(args, f"{stage}_api_key") or os.environ.get(f"{env}_API_KEY")
    if fallback is not None:
        if not url:
            url = ",".join(fallback.base_urls)
            key = key or fallback.api_key
        model = model or fallback.model
    if not url:
        raise CommandError(f"no {stage} endpoint: set --{stage}-base-url or {env}_BASE_URL")
    if not model:
        raise CommandError(f"no {stage} model: set --{stage}-model or {env}_MODEL")
    try:
        return JudgeSettings(
            base_urls=JudgeSettings.split_urls(url),
            model=model,
            api_key=key or "EMPTY",
            max_concurrency=args.concurrency,
            timeout_s=args.timeout,
            max_retries=args.max_retries,
            role=ROLES[stage],
        )
    except ValueError as exc:
        raise CommandError(f"{stage} endpoint: {exc}") from None


def summarize(
    results: list[ProblemResult], issues: list[Any], annotator: Annotator, prices: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    """Counts per status, calls/tokens/cost per stage (this run, and including calls reused from the store)."""
    statuses: dict[str, int] = {"skipped_input": len(issues)}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    stages: dict[str, Any] = {}
    for stage in STAGES:
        u = annotator.usage[stage]
        price_in, price_out = prices[stage]
        stages[stage] = {
            "calls": u.calls,
            "cached": u.cached,
            "refreshed": u.refreshed,
            "failed": u.failed,
            "invalid_replies": u.invalid,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "cost_usd": round(u.cost(price_in, price_out), 6),
            "cost_usd_incl_cached": round(u.cost(price_in, price_out, include_cached=True), 6),
        }
    annotations = [len(r.row["visual_annotations"]) for r in results if r.row]
    return {
        "rows_in": len(results) + len(issues),
        "rows_out": len(annotations),
        "status": statuses,
        "annotations_per_row": round(sum(annotations) / len(annotations), 3) if annotations else None,
        "stages": stages,
        "cost_usd": round(sum(s["cost_usd"] for s in stages.values()), 6),
    }


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit must be >= 1, got {args.limit}")
    try:
        config = AnnotateConfig(
            samples=args.samples,
            distill_temperature=args.temperature,
            distill_max_tokens=args.max_tokens,
            seed=None if args.seed is not None and args.seed < 0 else args.seed,
            distill_system=_read_text(args.distill_system, prompts.DISTILL_SYSTEM_PROMPT, "--distill-system"),
            distill_template=_read_text(args.distill_prompt, prompts.DISTILL_USER_TEMPLATE, "--distill-prompt"),
            extract_from=args.extract_from,
            max_annotations=args.max_annotations,
            max_annotation_chars=args.max_annotation_chars,
            extract_attempts=args.extract_attempts,
            extract_max_tokens=args.extract_max_tokens,
            structured_output=args.structured_output,
            concurrency=args.concurrency,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    distill_settings = _settings(args, "distill")
    extract_settings = _settings(args, "extract", fallback=distill_settings)
    try:
        problems, issues = load_problems(args.input, limit=args.limit, image_root=args.image_root)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    for issue in issues:
        logger.warning("%s:%d (id %s): skipped: %s", args.input, issue.line, issue.id, issue.error)
    store_path = args.store or f"{args.output}.store.sqlite"
    report_path = args.report or f"{args.output}.report.jsonl"
    distill = JudgeClient(distill_settings)
    same = extract_settings.with_(role=distill_settings.role) == distill_settings
    extract = distill if same else JudgeClient(extract_settings)
    for client in (distill,) if same else (distill, extract):  # like score and eval: fail before any paid call
        try:
            client.preflight_sync()
        except JudgeUnavailable as exc:
            raise CommandError(str(exc)) from None
    try:
        store = StageStore(store_path)
    except ValueError as exc:
        raise CommandError(str(exc)) from None

    async def go(bar: Any) -> list[ProblemResult]:
        ok = 0

        def done(result: ProblemResult) -> None:
            nonlocal ok
            ok += result.status == "ok"
            bar.set_postfix(annotated=ok, refresh=False)
            bar.update(1)

        try:
            return await annotator.run(problems, on_done=done)
        finally:
            await distill.aclose()
            if extract is not distill:
                await extract.aclose()

    with store:
        annotator = Annotator(distill, extract, store, config, refresh=args.refresh)
        with progress(len(problems), "annotating", unit="problem") as bar:
            results = asyncio.run(go(bar))
    write_jsonl_atomic(args.output, (r.row for r in results if r.row is not None))
    report_rows: list[dict[str, Any]] = [
        {"line": i.line, "id": i.id, "status": "skipped_input", "detail": i.error} for i in issues
    ]
    for r in results:
        report_rows.append(
            {
                "line": r.problem.line,
                "id": r.problem.id,
                "status": r.status,
                "detail": r.detail,
                "samples": r.samples,
                "correct": r.correct,
                "annotations": len(r.row["visual_annotations"]) if r.row else 0,
            }
        )
    report_rows.sort(key=lambda row: row["line"])
    write_jsonl_atomic(report_path, report_rows)
    prices = {
        "distill": (args.distill_price_in, args.distill_price_out),
        "extract": (args.extract_price_in, args.extract_price_out),
    }
    summary = summarize(results, issues, annotator, prices)
    summary.update(output=args.output, report=report_path, store=store_path)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_human(summary))
    failed = summary["status"].get("failed", 0)
    if failed:
        logger.warning("%d problem(s) failed on endpoint errors; rerun the same command to resume them", failed)
        return 1
    return 0


def _human(summary: dict[str, Any]) -> str:
    lines = [
        f"annotated {summary['rows_out']} of {summary['rows_in']} rows -> {summary['output']} "
        f"(report {summary['report']})",
        "status: " + ", ".join(f"{k} {v}" for k, v in summary["status"].items()),
    ]
    for stage, s in summary["stages"].items():
        lines.append(
            f"{stage}: {s['calls']} calls ({s['cached']} reused, {s['refreshed']} stored asked again, "
            f"{s['failed']} failed), "
            f"{s['prompt_tokens']} prompt + {s['completion_tokens']} completion tokens, ${s['cost_usd']:.4f}"
        )
    return "\n".join(lines)
