"""``perception-r1 tasks``: every registered task (``data_source``), its output components and its run settings
with defaults and meanings, generated from the task registry (so a task added by a plugin shows up too).

Setting meanings come from the settings dataclasses themselves, in this order: a field's ``metadata["help"]``, the
string literal right after the field (an attribute docstring), a ``#`` comment on the field's line or just above
it, or a ````name````: text entry in the class docstring (inherited fields are read from the class that defines
them).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import re
import sys
import textwrap
import typing
from functools import cache
from typing import Any

from ..rewards.registry import Task, registered_tasks

_DOC_ENTRY = re.compile(r"((?:``\w+``\s*/\s*)*``\w+``)\s*:\s*")


@dataclasses.dataclass
class SettingInfo:
    """One ``--set`` key of a task."""

    name: str
    type: str
    default: Any
    help: str


def _class_docstring_entries(doc: str) -> dict[str, str]:
    """``{"coord_frame": "the frame of ..."}`` from docstring text written as ````name````: text entries."""
    text = " ".join(doc.split())
    marks = list(_DOC_ENTRY.finditer(text))
    out: dict[str, str] = {}
    for k, mark in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        body = text[mark.end() : end].strip()
        body = body.split(". ")[0].rstrip(".;, ") if body else body
        for name in re.findall(r"``(\w+)``", mark.group(1)):
            out.setdefault(name, body)
    return out


@cache
def _docs_defined_in(cls: type) -> dict[str, str]:
    """Field docs written in ``cls``'s own body (attribute docstrings and comments), plus its docstring entries."""
    docs: dict[str, str] = {}
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (e.g. a zipped plugin): the class docstring still helps
        return _class_docstring_entries(cls.__doc__ or "")
    lines = source.splitlines()
    tree = ast.parse(source)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if node is None:
        return docs
    body = node.body
    for i, stmt in enumerate(body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        name = stmt.target.id
        following = body[i + 1] if i + 1 < len(body) else None
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[name] = " ".join(following.value.value.split())
            continue
        line = lines[stmt.lineno - 1]
        if "#" in line:
            docs[name] = line.split("#", 1)[1].strip().lstrip(":").strip()
            continue
        above = []
        k = stmt.lineno - 2
        while k >= 0 and lines[k].strip().startswith("#"):
            above.insert(0, lines[k].strip().lstrip("#:").strip())
            k -= 1
        if above:
            docs[name] = " ".join(above)
    for name, text in _class_docstring_entries(cls.__doc__ or "").items():
        docs.setdefault(name, text)
    return docs


def setting_infos(settings_cls: type) -> list[SettingInfo]:
    """The task's settings in declaration order, each with its type, default and meaning."""
    hints = typing.get_type_hints(settings_cls)
    out = []
    for f in dataclasses.fields(settings_cls):
        default: Any = f.default
        if f.default is dataclasses.MISSING:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        help_text = str(f.metadata.get("help") or f.metadata.get("doc") or "")
        if not help_text:
            for klass in settings_cls.__mro__:
                if dataclasses.is_dataclass(klass) and f.name in getattr(klass, "__annotations__", {}):
                    help_text = _docs_defined_in(klass).get(f.name, "")
                    if help_text:
                        break
        if not help_text:  # a subclass that only re-declares: look in every class's docstring entries
            for klass in settings_cls.__mro__:
                help_text = _class_docstring_entries(klass.__doc__ or "").get(f.name, "")
                if help_text:
                    break
        out.append(SettingInfo(f.name, _type_name(hints.get(f.name, f.type)), default, help_text))
    return out


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"  # an unset (None) default, as the listing prints it
    return getattr(annotation, "__name__", str(annotation))


def _summary(task: Task) -> str:
    module = sys.modules.get(getattr(task.rule_components, "__module__", ""), None)
    doc = (module.__doc__ or "") if module else ""
    first = doc.strip().split("\n\n")[0]
    return " ".join(first.replace("``", "").split())


def describe_tasks() -> list[dict[str, Any]]:
    """Every registered task as a plain dict (what ``perception-r1 tasks --json`` prints)."""
    out = []
    for name, task in sorted(registered_tasks().items()):
        out.append(
            {
                "data_source": name,
                "summary": _summary(task),
                "components": ["score", *task.output_keys],
                "judge": task.annotations is not None,
                "isolated_check": task.isolated.component if task.isolated is not None else None,
                "settings": [dataclasses.asdict(s) for s in setting_infos(task.settings)],
            }
        )
    return out


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (bool, type(None))) else str(value)


def settings_epilog() -> str:
    """The ``score --help`` epilog: valid data_source values and each task's ``--set`` keys with defaults."""
    lines = ["data_source values and their --set keys (default); `perception-r1 tasks` explains each:"]
    for task in describe_tasks():
        keys = " ".join(f"{s['name']}={_fmt(s['default'])}" for s in task["settings"])
        lines += textwrap.wrap(
            f"{task['data_source']}: {keys}",
            96,
            initial_indent="  ",
            subsequent_indent="      ",
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def format_tasks(tasks: list[dict[str, Any]]) -> str:
    """The human-readable listing."""
    blocks = []
    for task in tasks:
        lines = [f"{task['data_source']}", f"  {task['summary']}" if task["summary"] else ""]
        lines.append("  components: " + ", ".join(task["components"]))
        notes = []
        if task["judge"]:
            notes.append("asks the judge about the row's annotations (a judge failure: judge_failed = 1)")
        if task["isolated_check"]:
            notes.append(f"{task['isolated_check']} runs in a worker process under a hard time limit")
        lines += [f"  {note}" for note in notes]
        lines.append("  settings (--set key=value):")
        width = max(len(f"{s['name']} = {_fmt(s['default'])}") for s in task["settings"]) if task["settings"] else 0
        for s in task["settings"]:
            head = f"{s['name']} = {_fmt(s['default'])}".ljust(width)
            lines.append(f"    {head}  [{s['type']}] {s['help']}".rstrip())
        blocks.append("\n".join(line for line in lines if line))
    return "\n\n".join(blocks)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tasks",
        help="list the tasks (data_source values), their components and settings with defaults",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tasks = describe_tasks()
    print(json.dumps(tasks, indent=2, default=str) if args.json else format_tasks(tasks))
    return 0
