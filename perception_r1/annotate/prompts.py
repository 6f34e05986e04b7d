"""Prompts and the structured-output contract of the annotation pipeline.

Distillation asks a multimodal model for a think/answer/boxed solution that first reads the needed facts off the
diagram (so the trajectory carries them). Extraction asks a text model for the atomic visual facts of one correct
trajectory as JSON ``{"annotations": [str, ...]}``, requested with a JSON schema and validated here whatever the
server claims to enforce.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

DISTILL_SYSTEM_PROMPT = (
    "You are an expert geometry tutor. You solve problems that come with a diagram, reading every needed fact "
    "(lengths, angle measures, right angles, parallel or equal marks, points on lines or circles) off the diagram."
)

DISTILL_USER_TEMPLATE = """{problem}
{choices}
Solve the problem. Inside <think> </think>, first state each fact you read from the diagram that the solution \
needs (values, right angles, parallel lines, equal-length marks, which points lie on which lines or circles), \
then reason step by step. Then give the final answer inside <answer> </answer> as \\boxed{{...}}."""
"""Placeholders: ``{problem}`` (required) and ``{choices}`` (a ``Choices: …`` line, or empty). ``{{``/``}}``
are literal braces; nothing else is substituted, so LaTeX in a custom template is safe."""

EXTRACT_SYSTEM_PROMPT = """You extract atomic visual annotations from a correct solution of a geometry problem.
An atomic visual annotation is one short fact that can be read off the problem's diagram and that the solution
needs, written compactly with the diagram's own labels, e.g. "GE = 10", "GE ⊥ DF", "m∠ABC = 60°", "EB ∥ DC",
"E lies on AD", "AE = BE (tick marks)". Rules:
- one fact per item, at most {max_len} characters, no explanations;
- only facts visible in the diagram (values, marks, right angles, parallel arrows, incidences), not facts given
  only in the problem text, not derived results, not the final answer;
- no duplicates; at most {max_items} items, the most important first.
Reply with JSON only: {{"annotations": ["...", "..."]}}."""

EXTRACT_USER_TEMPLATE = """Problem: {problem}

Correct solution:
{trajectory}

List the atomic visual annotations this solution relies on."""


def annotation_schema(max_items: int) -> dict[str, Any]:
    """The JSON schema of an extraction reply."""
    return {
        "type": "object",
        "properties": {
            "annotations": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "maxItems": max_items,
            }
        },
        "required": ["annotations"],
        "additionalProperties": False,
    }


def structured_output_params(mode: str, max_items: int) -> dict[str, Any]:
    """Request parameters asking for schema-conforming JSON.

    ``json_schema``: OpenAI's ``response_format`` (vLLM, OpenAI, most gateways); ``guided_json``: vLLM's older
    ``extra_body`` field; ``json_object``: plain JSON mode; ``none``: prompt only.
    """
    schema = annotation_schema(max_items)
    if mode == "json_schema":
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "visual_annotations", "schema": schema, "strict": True},
            }
        }
    if mode == "guided_json":
        return {"extra_body": {"guided_json": schema}}
    if mode == "json_object":
        return {"response_format": {"type": "json_object"}}
    if mode == "none":
        return {}
    raise ValueError(f"structured output mode must be json_schema, guided_json, json_object or none, got {mode!r}")


def render_template(template: str, **values: str) -> str:
    """Substitute ``{name}`` placeholders only (LaTeX braces elsewhere stay as they are); ``{{``/``}}`` -> braces."""

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return values[match.group(1)]

    names = "|".join(re.escape(name) for name in values)
    return re.sub(r"\{\{|\}\}|\{(" + names + r")\}", substitute, template)


def choices_line(choices: Any) -> str:
    """``Choices: A. 30  B. 40 …`` for a list of options; empty for none."""
    if not choices:
        return ""
    if isinstance(choices, dict):
        items = [f"{k}. {v}" for k, v in choices.items()]
    else:
        items = [f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices)]
    return "Choices: " + "  ".join(items) + "\n"


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def normalise_annotation(text: str) -> str:
    """The de-duplication key: NFKC, case-folded, whitespace removed, trailing punctuation dropped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(text.split()).rstrip(".;,")


def dedupe(annotations: Sequence[str], cap: int) -> list[str]:
    """Keep the first occurrence of each normalised annotation, at most ``cap`` of them."""
    seen: set[str] = set()
    out: list[str] = []
    for item in annotations:
        key = normalise_annotation(item)
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(item)
        if len(out) >= cap:
            break
    return out


def parse_annotations(reply: str, max_items: int, max_len: int) -> list[str]:
    """Validate an extraction reply; ``ValueError`` says what is wrong (empty, bad JSON, wrong schema).

    Accepts a bare JSON object or one wrapped in a Markdown code fence. Items are stripped; items longer than
    ``max_len`` (explanations, not atomic facts) are dropped; the rest are de-duplicated and capped.
    """
    text = (reply or "").strip()
    if not text:
        raise ValueError("empty reply")
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"reply is not JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("annotations"), list):
        raise ValueError('reply is not an object {"annotations": [str, ...]}')
    items: list[str] = []
    for i, item in enumerate(obj["annotations"]):
        if not isinstance(item, str):
            raise ValueError(f"annotations[{i}] is {type(item).__name__}, not a string")
        item = " ".join(item.split())
        if item and len(item) <= max_len:
            items.append(item)
    items = dedupe(items, max_items)
    if not items:
        raise ValueError("no usable annotations (empty list or all items too long)")
    return items
