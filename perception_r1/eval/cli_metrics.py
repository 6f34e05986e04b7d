"""``perception-r1 eval coco | mcnemar | report``: metrics on files, paired statistics, checkpoint reports."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import CommandError


def register(subparsers: Any) -> None:
    """Add ``coco``, ``mcnemar`` and ``report`` to the ``eval`` sub-command parser."""
    coco = subparsers.add_parser(
        "coco",
        help="COCO bbox AP/AR of a results file (pycocotools)",
        description="COCO detection metrics through pycocotools' COCOeval (bbox). Every annotated image is "
        "evaluated; a result without 'score' counts as 1.0 (model boxes carry no confidence).",
    )
    coco.add_argument("--annotations", required=True, help="COCO instances JSON (ground truth)")
    coco.add_argument("--predictions", required=True, help="COCO results JSON: [{image_id, category_id, bbox, score}]")
    coco.add_argument("--json", action="store_true", help='print {"AP", "AP50", "AP75", ...} as JSON')
    coco.set_defaults(func=_run_coco)

    mc = subparsers.add_parser(
        "mcnemar",
        help="McNemar's test of two runs' per-item outcomes",
        description="Pairs rows {id, <key>: bool} of two JSONL files by id and tests the discordant counts: "
        "b = right before and wrong after, c = wrong before and right after. Exact two-sided binomial p when "
        "b + c < 25, continuity-corrected chi-square otherwise.",
    )
    mc.add_argument("--before", required=True, help="JSONL of the first run (e.g. the base model)")
    mc.add_argument("--after", required=True, help="JSONL of the second run (e.g. the trained model)")
    mc.add_argument("--key", default="correct", help="boolean outcome field (default: correct)")
    mc.add_argument("--id-field", default="id", help="item id field (default: id)")
    mc.add_argument("--json", action="store_true", help='print {"b", "c", "p_value", "method", ...} as JSON')
    mc.set_defaults(func=_run_mcnemar)

    rep = subparsers.add_parser(
        "report",
        help="compare checkpoints: Markdown/JSON table and PNG plots",
        description="Writes report.md, report.json, bench_<benchmark>.png and (with --train-log) training.png.",
    )
    rep.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="LABEL=PATH[,PATH...]",
        help="a checkpoint's metrics: JSON files or folders of them (repeat per checkpoint)",
    )
    rep.add_argument("--baseline", help="label of the baseline run (default: the first --run)")
    rep.add_argument(
        "--train-log",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="training log: verl console log, JSONL {step, ...} / verl file logger, or a SwanLab run folder",
    )
    rep.add_argument(
        "--train-metric",
        default=None,
        metavar="REGEX",
        help="training keys to plot (default: keys matching 'reward|score')",
    )
    rep.add_argument("--metric", action="append", default=[], help="metric names for the table/plots (repeatable)")
    rep.add_argument("--title", default="Checkpoint comparison")
    rep.add_argument(
        "--allow-partial",
        action="store_true",
        help="compare runs that are partial (items without a prediction) or cover different item sets; "
        "the report marks them (default: refuse)",
    )
    rep.add_argument("--out", required=True, help="output folder")
    rep.set_defaults(func=_run_report)


def _run_coco(args: argparse.Namespace) -> int:
    from .perception_metrics import coco_detection_metrics

    try:
        stats = coco_detection_metrics(args.annotations, args.predictions)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps(stats))
    else:
        for name, value in stats.items():
            print(f"{name:>6}  {value:.4f}")
    return 0


def _run_mcnemar(args: argparse.Namespace) -> int:
    from .statistics import mcnemar_from_files

    try:
        table, result = mcnemar_from_files(args.before, args.after, args.key, args.id_field)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps({**result.to_dict(), "n": table.n, "both_correct": table.a, "both_wrong": table.d}))
    else:
        print(f"paired items: {table.n} (both right {table.a}, both wrong {table.d})")
        print(f"b (right -> wrong): {result.b}")
        print(f"c (wrong -> right): {result.c}")
        stat = f", chi2 = {result.statistic:.4f}" if result.statistic is not None else ""
        print(f"p = {result.p_value:.4g} ({result.method}{stat})")
    return 0


def _split_labelled(value: str, option: str) -> tuple[str, str]:
    label, sep, path = value.partition("=")
    if not sep or not label or not path:
        raise CommandError(f"{option} {value!r}: expected LABEL=PATH")
    return label, path


def _run_report(args: argparse.Namespace) -> int:
    import re

    from .report import DEFAULT_TRAIN_PATTERN, build_report, load_run, read_training_log

    pattern = args.train_metric or DEFAULT_TRAIN_PATTERN
    try:
        re.compile(pattern)
    except re.error as exc:
        raise CommandError(f"--train-metric {pattern!r}: invalid regex ({exc})") from None
    try:
        runs = []
        coverage = {}
        for value in args.run:
            label, paths = _split_labelled(value, "--run")
            metrics, coverage[label] = load_run(paths.split(","))
            runs.append((label, metrics))
        logs = []
        for value in args.train_log:
            label, path = _split_labelled(value, "--train-log")
            logs.append((label, read_training_log(path)))
        report = build_report(
            runs,
            args.out,
            baseline=args.baseline,
            training_logs=logs,
            metrics=args.metric,
            train_pattern=pattern,
            title=args.title,
            coverage=coverage,
            allow_partial=args.allow_partial,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(report.markdown)
    print(report.json)
    for plot in report.plots:
        print(plot)
    return 0
