"""``perception-r1 eval …``: benchmark inference, metrics, statistics and reports.

Each module in :data:`EVAL_MODULES` exposes ``register(subparsers)`` adding its own ``eval`` sub-commands.
"""

from __future__ import annotations

from typing import Any

from . import register_modules

EVAL_MODULES = (
    "perception_r1.eval.cli_inference",  # eval run / eval score (benchmarks through a served checkpoint)
    "perception_r1.eval.cli_metrics",  # eval coco / eval mcnemar / eval report
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("eval", help="evaluate checkpoints: benchmarks, metrics, McNemar, reports")
    commands = parser.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND")
    register_modules(commands, EVAL_MODULES)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
