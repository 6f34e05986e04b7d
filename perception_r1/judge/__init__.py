"""The one judge client (OpenAI-compatible, async) and the visual-annotation judging protocol."""

from .client import JudgeClient, JudgeError, JudgeSettings, JudgeUnavailable
from .visual import VisualVerdict, build_visual_messages, judge_visual, parse_verdicts

__all__ = [
    "JudgeClient",
    "JudgeError",
    "JudgeSettings",
    "JudgeUnavailable",
    "VisualVerdict",
    "build_visual_messages",
    "judge_visual",
    "parse_verdicts",
]
