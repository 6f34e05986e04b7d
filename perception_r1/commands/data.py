"""``perception-r1 data <dataset>``: dataset builders that write verl parquet.

Each builder module in :data:`BUILDER_MODULES` exposes ``register(subparsers)`` adding its own sub-command.
"""

from __future__ import annotations

from typing import Any

from . import register_modules

BUILDER_MODULES = (
    "perception_r1.data.geo3k",
    "perception_r1.data.refcoco",
    "perception_r1.data.pixmo_count",
    "perception_r1.data.pageocr",
    "perception_r1.data.coco_detection",
    "perception_r1.data.curriculum",
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="build training/validation parquet files for verl")
    builders = parser.add_subparsers(dest="dataset", metavar="DATASET")
    register_modules(builders, BUILDER_MODULES)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
