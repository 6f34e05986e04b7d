"""``perception-r1 judge …``: judge utilities. ``judge calibrate`` measures a judge against labelled responses."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

from ..errors import CommandError
from ..judge.calibration import (
    KINDS,
    Thresholds,
    row_output,
    run_judge,
    shipped_labels_path,
    summarize,
    validate_row,
)
from ..judge.client import JudgeClient, JudgeUnavailable
from ..judge.structured import detect_structured_outputs
from ..judge.visual import PROMPTS
from .common import add_judge_options, judge_settings_from_args, progress, read_jsonl, write_jsonl_atomic

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("judge", help="judge utilities (calibrate)")
    commands = parser.add_subparsers(dest="judge_command", metavar="JUDGE_COMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    cal = commands.add_parser(
        "calibrate",
        help="measure the judge against labelled responses (agreement, precision, recall, hack rate)",
        description='Rows {"response", "annotations": [str], "labels": [0|1 per annotation], "kind"?: '
        f"{'|'.join(KINDS)}}}. Prints agreement, precision and recall of 'present' over all (annotation, label) "
        "pairs, the visual-reward error per response and the rate at which the judge rewards parroted or forged "
        "annotations; warns when the judge is below the thresholds.",
    )
    cal.add_argument(
        "--labels",
        default=None,
        help="labelled JSONL (default: the shipped Geometry3K set, perception_r1/judge/data/geo3k_calibration.jsonl)",
    )
    cal.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    cal.add_argument("--details", help="write per-row verdicts to this JSONL file")
    cal.add_argument("--strict", action="store_true", help="exit 1 when any threshold is missed")
    cal.add_argument(
        "--judge-prompt",
        choices=PROMPTS,
        default="paper",
        help="the judge's question, as the reward setting judge_prompt (default: paper, is each fact present); "
        "rows are compared with the labels for that question",
    )
    d = Thresholds()
    group = cal.add_argument_group("thresholds (a warning when missed)")
    group.add_argument("--min-agreement", type=float, default=d.min_agreement)
    group.add_argument("--min-precision", type=float, default=d.min_precision)
    group.add_argument("--min-recall", type=float, default=d.min_recall)
    group.add_argument("--max-visual-mae", type=float, default=d.max_visual_mae)
    group.add_argument("--max-hack-rate", type=float, default=d.max_hack_rate)
    add_judge_options(cal)
    cal.set_defaults(func=run_calibrate)


def _format(value: Any) -> str:
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def _human(report: dict[str, Any]) -> str:
    keys = ("n", "agreement", "precision", "recall", "kappa", "visual_mae", "visual_bias", "hack_rate")
    lines = ["judge calibration: " + ", ".join(f"{k} {_format(report[k])}" for k in keys)]
    lines.append(
        f"  rows {report['rows']}, judge_failed {report['judge_failed']}, prompt {report['judge_prompt']}, "
        f"replies {report['judge_replies']}"
    )
    for kind, m in report["by_kind"].items():
        lines.append(
            f"  {kind:<10} rows {m['rows']:>3}  agreement {_format(m['agreement'])}  "
            f"false-present {_format(m['false_present_rate'])}  visual_mae {_format(m['visual_mae'])}"
        )
    lines.append("PASSED" if report["passed"] else "WARNING: " + "; ".join(report["warnings"]))
    return "\n".join(lines)


def run_calibrate(args: argparse.Namespace) -> int:
    path = args.labels or shipped_labels_path()
    rows = []
    for number, obj in read_jsonl(path):
        try:
            rows.append(validate_row(obj, f"{path}:{number}"))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    if not rows:
        raise CommandError(f"{path}: no labelled rows")
    settings = judge_settings_from_args(args)
    if settings is None:
        raise CommandError("no judge configured: set --judge-base-url or VLLM_SERVER_BASE_URL")
    client = JudgeClient(settings)
    try:
        client.preflight_sync()
    except JudgeUnavailable as exc:
        raise CommandError(str(exc)) from None

    mode: dict[str, Any] = {}

    async def go(bar: Any) -> list[Any]:
        try:
            support = await detect_structured_outputs(client)
            mode.update(constrained=support.constrained, reason=support.reason)
            logger.info("%s", support.describe())
            return await run_judge(
                client, rows, on_done=lambda: bar.update(1), prompt=args.judge_prompt, constrained=support.constrained
            )
        finally:
            await client.aclose()

    with progress(len(rows), "judging", unit="row") as bar:
        results = asyncio.run(go(bar))
    thresholds = Thresholds(
        min_agreement=args.min_agreement,
        min_precision=args.min_precision,
        min_recall=args.min_recall,
        max_visual_mae=args.max_visual_mae,
        max_hack_rate=args.max_hack_rate,
    )
    report = summarize(results, thresholds).as_dict()
    report.update(labels=str(path), judge_model=settings.model, judge_prompt=args.judge_prompt)
    report["judge_replies"] = "constrained" if mode.get("constrained") else "free"
    if args.details:
        write_jsonl_atomic(args.details, (row_output(r) for r in results))
    for warning in report["warnings"]:
        logger.warning("judge %s: %s", settings.model, warning)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_human(report))
    return 1 if args.strict and report["warnings"] else 0
