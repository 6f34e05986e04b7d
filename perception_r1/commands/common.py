"""Helpers shared by CLI subcommands: the help formatter, judge options, ``--set``, JSONL I/O with atomic writes,
progress bars."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import CommandError
from ..jsonl import iter_jsonl
from ..judge.client import JudgeSettings
from ..rewards.registry import parse_set_options


class _DefaultsMixin:
    """Every option's help ends with its default, unless the help already states one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text.lower()
            or not action.option_strings
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
            action.help = "(default: %(default)s)"  # an option without help still shows its default
        return super()._format_action(action)  # type: ignore[misc]


class _ParagraphMixin:
    """Descriptions and epilogs: runs of plain lines are re-wrapped as one paragraph, indented lines (tables of
    values) and blank lines are kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        run: list[str] = []

        def flush() -> None:
            if run:
                out.append(textwrap.fill(" ".join(" ".join(run).split()), width, initial_indent=indent,
                                         subsequent_indent=indent))  # fmt: skip
                run.clear()

        for line in text.splitlines():
            if line.startswith("  ") or not line.strip():
                flush()
                out.append(indent + line if line.strip() else "")
            else:
                run.append(line)
        flush()
        return "\n".join(out)


class HelpFormatter(_DefaultsMixin, _ParagraphMixin, argparse.HelpFormatter):
    """The formatter of every ``perception-r1`` parser (see the two mixins)."""


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose help always shows defaults; sub-parsers inherit it (argparse creates them with the
    parent's class), and a parser asking for another formatter gets that formatter with defaults mixed in."""

    def __init__(self, *args: Any, formatter_class: type = HelpFormatter, **kwargs: Any) -> None:
        if not issubclass(formatter_class, _DefaultsMixin):
            formatter_class = type(f"Defaults{formatter_class.__name__}", (_DefaultsMixin, formatter_class), {})
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def format_help(self) -> str:
        if callable(self.epilog):  # an epilog built only when help is shown (e.g. from the task registry)
            self.epilog = self.epilog()
        return super().format_help()


def add_judge_options(parser: argparse.ArgumentParser) -> None:
    """``--judge-base-url`` etc., each falling back to the launcher's env vars."""
    group = parser.add_argument_group(
        "judge (env-var fallbacks: VLLM_SERVER_BASE_URL, VLLM_MODEL_NAME, VLLM_SERVER_API_KEY)"
    )
    group.add_argument("--judge-base-url", help="comma-separated OpenAI-compatible base URLs (replicas)")
    group.add_argument("--judge-model", help="served model name")
    group.add_argument(
        "--judge-api-key", help="API key (prefer the VLLM_SERVER_API_KEY env var: argv is visible to ps)"
    )
    group.add_argument("--judge-max-concurrency", type=int, help="in-flight requests per process (default 64)")
    group.add_argument("--judge-timeout", type=float, help="per-request timeout in seconds (default 60)")
    group.add_argument("--judge-max-retries", type=int, help="retries after the first attempt (default 3)")


def judge_settings_from_args(args: argparse.Namespace) -> JudgeSettings | None:
    """Judge settings from CLI options and env vars; ``None`` when no base URL is configured."""
    try:
        return JudgeSettings.from_env(
            base_url=args.judge_base_url,
            model=args.judge_model,
            api_key=args.judge_api_key,
            max_concurrency=args.judge_max_concurrency,
            timeout_s=args.judge_timeout,
            max_retries=getattr(args, "judge_max_retries", None),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="settings",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="run settings, e.g. --set visual_weight=0.5 coord_frame=qwen2_5_vl",
    )


def settings_from_args(args: argparse.Namespace) -> dict[str, str]:
    try:
        return parse_set_options(args.settings)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line; ``CommandError`` naming the line on bad JSON."""
    return iter_jsonl(path, CommandError, require_object=False)


@contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Write to a temp file beside ``path`` and rename it into place only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[Any]) -> None:
    with atomic_writer(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def progress(total: int | None, desc: str, unit: str = "row", initial: int = 0) -> Any:
    """A tqdm bar on stderr (rate and ETA); disabled when ``PERCEPTION_R1_NO_PROGRESS=1``."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=os.environ.get("PERCEPTION_R1_NO_PROGRESS") == "1",
    )
