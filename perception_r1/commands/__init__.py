"""CLI subcommands; each module exposes ``register(subparsers)``."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any


def register_modules(subparsers: Any, module_names: Iterable[str]) -> None:
    """Import each module and let it add its sub-commands to ``subparsers``."""
    for module_name in module_names:
        importlib.import_module(module_name).register(subparsers)
