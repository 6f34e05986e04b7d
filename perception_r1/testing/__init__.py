"""Test support shipped with the package: a local OpenAI-compatible server with scripted answers."""

from .openai_server import OpenAITestServer, substring_judge

__all__ = ["OpenAITestServer", "substring_judge"]
