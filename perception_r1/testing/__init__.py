"""Test support shipped with the package: a local OpenAI-compatible server with scripted answers, a real-vocabulary
Qwen processor builder, and verl dataset helpers. Imported lazily so ``python -m perception_r1.testing.openai_server``
runs without a double import."""

from __future__ import annotations

from typing import Any

__all__ = ["OpenAITestServer", "substring_judge"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import openai_server

        return getattr(openai_server, name)
    raise AttributeError(name)
