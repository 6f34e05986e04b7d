"""Compare checkpoints: a Markdown + JSON table of benchmark metrics and PNG plots.

Inputs (all local files, read at the edge by :func:`load_metrics` and :func:`read_training_log`):

- Metrics of each checkpoint: JSON files, or folders of them, in either shape
  - an ``eval score`` summary: ``{"benchmark": "mathvista", "accuracy": 0.61, "n": 1000, ...}``;
  - a mapping ``{"<benchmark>": {"<metric>": number, ...}, ...}`` (e.g. ``{"refcoco_val": {"acc@0.5": 0.9}}``).
  Nested objects are flattened with ``/`` (``wemath/score_strict``); non-numeric values are ignored.
- Training logs (optional), one per run, in any of these forms:
  - verl's console logger lines ``step:N - key:value - key:value`` (values as verl prints them, including
    ``np.float64(0.5)``; any prefix before ``step:`` such as Ray's ``(TaskRunner pid=1)`` is ignored);
  - JSONL rows ``{"step": N, "key": value, ...}`` or verl's file logger rows ``{"step": N, "data": {...}}``;
  - a SwanLab local run folder (``swanlog/run-*``, or the ``swanlog`` folder: its newest run), read through
    swanlab's own record reader (tested with swanlab 0.10).

Outputs in the report folder: ``report.md``, ``report.json``, ``bench_<benchmark>.png`` (grouped bars per metric,
the baseline first and hatched) and ``training.png`` (the selected training metrics over steps, one panel each).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jsonl import iter_jsonl

# Metrics shown in the table and plots when present (in this order); everything numeric goes to report.json.
HEADLINE_METRICS: tuple[str, ...] = (
    "accuracy",
    "acc@0.5",
    "acc@0.75",
    "acc@0.95",
    "acc_mean",
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR100",
    "edit_distance",
    "f1",
    "precision",
    "recall",
    "bleu",
    "meteor",
    "wemath/score_strict",
    "wemath/score_loose",
)
LOWER_IS_BETTER = frozenset({"edit_distance"})
DEFAULT_TRAIN_PATTERN = r"reward|score"
MAX_TRAIN_PANELS = 12

Metrics = dict[str, dict[str, float]]  # benchmark -> metric -> value


# ---------------------------------------------------------------- reading metrics


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            out[prefix] = float(value)
        return
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(f"{prefix}/{key}" if prefix else str(key), sub, out)


def _metrics_from_object(obj: Any, source: str) -> Metrics:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a JSON object (an eval summary or {{benchmark: {{metric: value}}}})")
    if isinstance(obj.get("benchmark"), str):  # an `eval score` summary of one benchmark
        flat: dict[str, float] = {}
        for key, value in obj.items():
            if key not in ("benchmark", "checkpoint", "predictions"):
                _flatten(str(key), value, flat)
        return {obj["benchmark"]: flat}
    out: Metrics = {}
    for bench, value in obj.items():
        if isinstance(value, Mapping):
            flat = {}
            _flatten("", value, flat)
            if flat:
                out[str(bench)] = flat
    if not out:
        raise ValueError(f"{source}: no benchmark metrics found (expected {{benchmark: {{metric: number}}}})")
    return out


@dataclass(frozen=True)
class Coverage:
    """How much of a benchmark one run's metrics cover: ``answered`` of ``n`` items; ``items`` digests the item
    set (``None`` when the metrics file does not say)."""

    answered: int
    n: int
    items: str | None = None

    @property
    def partial(self) -> bool:
        return self.answered < self.n

    def __str__(self) -> str:
        return f"{self.answered}/{self.n}"

    def as_dict(self) -> dict[str, Any]:
        return {"answered": self.answered, "n": self.n, "items": self.items}


def _coverage_of(values: Mapping[str, Any]) -> Coverage | None:
    """The coverage an `eval score` summary records (``answered``/``n``; older summaries: ``n`` + ``missing``)."""
    n, answered, missing = values.get("n"), values.get("answered"), values.get("missing")
    items = values.get("items_sha256")
    items = items if isinstance(items, str) else None
    if isinstance(n, (int, float)) and isinstance(answered, (int, float)):
        return Coverage(int(answered), int(n), items)
    if isinstance(n, (int, float)) and isinstance(missing, (int, float)):  # before `answered`: n counted answered
        return Coverage(int(n), int(n) + int(missing), items)
    return None


def load_run(paths: Sequence[str | os.PathLike[str]]) -> tuple[Metrics, dict[str, Coverage]]:
    """:func:`load_metrics` plus each benchmark's :class:`Coverage` where the files record it."""
    merged: Metrics = {}
    coverage: dict[str, Coverage] = {}
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise ValueError(f"{path}: folder holds no *.json metrics files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    for file in files:
        try:
            obj = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        for bench, values in _metrics_from_object(obj, str(file)).items():
            if bench in merged:
                raise ValueError(f"{file}: benchmark {bench!r} already read from another file of this run")
            merged[bench] = values
            raw_values = obj if isinstance(obj.get("benchmark"), str) else obj.get(bench, {})
            cov = _coverage_of(raw_values) if isinstance(raw_values, Mapping) else None
            if cov is not None:
                coverage[bench] = cov
    return merged, coverage


def load_metrics(paths: Sequence[str | os.PathLike[str]]) -> Metrics:
    """Merge the benchmark metrics of one checkpoint from JSON files and folders of ``*.json`` files.

    ``ValueError`` naming the file for unreadable JSON, a wrong shape, or a benchmark defined twice.
    """
    return load_run(paths)[0]


def coverage_problems(
    runs: Sequence[str], coverage: Mapping[str, Mapping[str, Coverage]], benchmarks: Sequence[str]
) -> list[str]:
    """Why comparing these runs would mislead: per benchmark, partial runs, or runs over different item sets.

    Each metric counts a missing item as a miss, so a run that answered 70 of 304 items and a complete one are not
    comparable, nor are two runs over different items. Benchmarks whose files record no coverage are not checked.
    """
    problems = []
    for bench in benchmarks:
        known = [(label, coverage[label][bench]) for label in runs if bench in coverage.get(label, {})]
        if len(known) < 2:
            continue
        listing = ", ".join(f"{label} {cov}" for label, cov in known)
        if len({cov.n for _, cov in known}) > 1 or len({cov.items for _, cov in known if cov.items}) > 1:
            problems.append(f"{bench}: the runs' item sets differ ({listing} items)")
        elif any(cov.partial for _, cov in known):
            problems.append(f"{bench}: runs of different or partial coverage ({listing} answered)")
    return problems


# ---------------------------------------------------------------- reading training logs

_STEP = re.compile(r"(?:^|[\s)\]])step:(\d+)((?: - [^\n]*)?)$")
_WRAPPED = re.compile(r"^[A-Za-z_][\w.]*\((.*)\)$")  # np.float64(0.5), tensor(0.5)


def _console_value(text: str) -> float | None:
    text = text.strip()
    match = _WRAPPED.match(text)
    if match:
        text = match.group(1).split(",")[0].strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _parse_console_line(line: str) -> tuple[int, dict[str, float]] | None:
    """``(step, metrics)`` from one verl console line ``step:N - key:value - ...``; None for other lines."""
    match = _STEP.search(line.rstrip("\r\n"))
    if not match:
        return None
    metrics: dict[str, float] = {}
    for part in match.group(2).split(" - ")[1:]:
        key, sep, raw = part.rpartition(":")
        if not sep or not key:
            continue
        value = _console_value(raw)
        if value is not None:
            metrics[key.strip()] = value
    return int(match.group(1)), metrics


def _merge(rows: dict[int, dict[str, float]], step: int, metrics: Mapping[str, float]) -> None:
    rows.setdefault(step, {}).update(metrics)


def _read_jsonl_log(path: Path) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    for number, row in iter_jsonl(path, require_object=False):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected an object with 'step'")
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step != int(step):
            raise ValueError(f"{path}:{number}: field 'step' missing or not an integer (got {step!r})")
        payload = row["data"] if isinstance(row.get("data"), Mapping) else row
        flat: dict[str, float] = {}
        _flatten("", {k: v for k, v in payload.items() if k != "step"}, flat)
        _merge(rows, int(step), flat)
    return rows


def _swanlab_run_dir(path: Path) -> Path | None:
    if list(path.glob("*.swanlab")):
        return path
    runs = sorted(p for p in path.glob("run-*") if p.is_dir() and list(p.glob("*.swanlab")))
    return runs[-1] if runs else None


def _read_swanlab(run_dir: Path) -> dict[int, dict[str, float]]:
    try:  # swanlab's own reader of its LevelDB-style record file (internal API: checked at import)
        from swanlab.proto.swanlab.record.v1 import record_pb2
        from swanlab.sdk.internal.core_python.store import DataStoreReader
    except ImportError as exc:
        raise ValueError(
            f"{run_dir}: cannot read this SwanLab run with the installed swanlab ({exc}); "
            "log with verl's console or file logger instead"
        ) from None
    rows: dict[int, dict[str, float]] = {}
    for file in sorted(run_dir.glob("*.swanlab")):
        reader = DataStoreReader()
        reader.open(str(file))
        try:
            for data in reader:
                record = record_pb2.Record()
                record.ParseFromString(data)
                if record.WhichOneof("record_type") != "scalar":
                    continue
                scalar = record.scalar
                value = scalar.value.number
                if math.isfinite(value):
                    _merge(rows, int(scalar.step), {scalar.key: float(value)})
        finally:
            reader.close()
    return rows


def read_training_log(path: str | os.PathLike[str]) -> list[dict[str, float]]:
    """Training metrics as rows ``{"step": N, key: value, ...}`` sorted by step (see the module doc for formats).

    ``ValueError`` naming the file when nothing readable is found.
    """
    p = Path(path)
    if p.is_dir():
        run_dir = _swanlab_run_dir(p)
        if run_dir is None:
            raise ValueError(f"{p}: folder is not a SwanLab run (no *.swanlab file in it or in a run-* folder)")
        rows = _read_swanlab(run_dir)
    elif not p.is_file():
        raise ValueError(f"{p}: no such file or folder")
    else:
        with p.open(encoding="utf-8", errors="replace") as handle:
            first = next((line for line in handle if line.strip()), "")
        if first.lstrip().startswith("{"):
            rows = _read_jsonl_log(p)
        else:
            rows = {}
            with p.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    parsed = _parse_console_line(line)
                    if parsed:
                        _merge(rows, *parsed)
    if not rows:
        raise ValueError(f"{p}: no training steps found (expected verl 'step:N - key:value' lines, JSONL or SwanLab)")
    return [{"step": step, **rows[step]} for step in sorted(rows)]


# ---------------------------------------------------------------- the report


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    markdown: Path
    json: Path
    plots: list[Path] = field(default_factory=list)


def _headline(benchmark_metrics: Mapping[str, float], extra: Sequence[str]) -> list[str]:
    wanted = list(extra) if extra else list(HEADLINE_METRICS)
    chosen = [m for m in wanted if m in benchmark_metrics]
    if not chosen and not extra:  # an unknown benchmark: show what it has, minus counts
        skip = ("n", "correct", "missing", "answered", "coverage")
        chosen = [m for m in benchmark_metrics if m not in skip and "/" not in m][:6]
    return chosen


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "benchmark"


def build_report(
    runs: Sequence[tuple[str, Metrics]],
    out_dir: str | os.PathLike[str],
    *,
    baseline: str | None = None,
    training_logs: Sequence[tuple[str, Sequence[Mapping[str, float]]]] = (),
    metrics: Sequence[str] = (),
    train_pattern: str = DEFAULT_TRAIN_PATTERN,
    title: str = "Checkpoint comparison",
    coverage: Mapping[str, Mapping[str, Coverage]] | None = None,
    allow_partial: bool = False,
) -> Report:
    """Write ``report.md``, ``report.json`` and PNG plots comparing ``runs`` (``(label, metrics)``) to ``baseline``.

    ``baseline`` defaults to the first run; ``metrics`` restricts the table/plots to these metric names (all
    numeric metrics always go to ``report.json``); ``training_logs`` are ``(label, rows)`` from
    :func:`read_training_log`, plotted for the keys matching ``train_pattern`` (a regex).

    ``coverage`` (``label -> benchmark -> Coverage``, from :func:`load_run`) adds a coverage row per benchmark.
    Runs of a benchmark that are partial or cover different item sets raise ``ValueError`` (nothing written)
    unless ``allow_partial``; then the report marks them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise ValueError("runs: at least one checkpoint is needed")
    labels = [label for label, _ in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"runs: duplicate labels in {labels}")
    baseline = baseline or labels[0]
    if baseline not in labels:
        raise ValueError(f"baseline: {baseline!r} is not one of the runs {labels}")
    order = [baseline] + [label for label in labels if label != baseline]
    by_label = dict(runs)
    benchmarks: list[str] = []
    for label in order:
        for bench in by_label[label]:
            if bench not in benchmarks:
                benchmarks.append(bench)
    coverage = coverage or {}
    problems = coverage_problems(order, coverage, benchmarks)
    if problems and not allow_partial:
        raise ValueError(
            "; ".join(problems) + ". A missing item counts as a miss, so these numbers are not comparable: finish "
            "the runs (`eval run` resumes) or pass --allow-partial to compare anyway (the report marks them)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []

    table: list[dict[str, Any]] = []
    md = [f"# {title}", "", f"Baseline: **{baseline}**. Δ is each checkpoint minus the baseline"]
    md[-1] += " (↓: lower is better)." if any(m in LOWER_IS_BETTER for m in metrics or HEADLINE_METRICS) else "."
    md += ["", "| benchmark | metric | " + " | ".join(order) + " | " + " | ".join(f"Δ {x}" for x in order[1:]) + " |"]
    md.append("|" + "---|" * (2 + len(order) + len(order) - 1))
    for bench in benchmarks:
        union: dict[str, float] = {}
        for label in order:
            union.update(by_label[label].get(bench, {}))
        shown = _headline(union, metrics)
        covs = {label: coverage.get(label, {}).get(bench) for label in order}
        if any(c is not None for c in covs.values()):
            cells = [
                "—" if c is None else f"{c}" + (" ⚠ partial" if c.partial else "") for c in (covs[x] for x in order)
            ]
            md.append(f"| {bench} | coverage | " + " | ".join(cells) + " |" + " |" * (len(order) - 1))
        for metric in shown:
            values = {label: by_label[label].get(bench, {}).get(metric) for label in order}
            base = values[baseline]
            deltas = {
                label: (None if values[label] is None or base is None else values[label] - base) for label in order[1:]
            }
            table.append({"benchmark": bench, "metric": metric, "values": values, "delta": deltas})
            name = f"{metric} ↓" if metric in LOWER_IS_BETTER else metric
            cells = [_fmt(values[label]) for label in order]
            dcells = ["—" if d is None else f"{d:+.4f}" for d in deltas.values()]
            md.append(
                f"| {bench} | {name} | " + " | ".join(cells) + (" | " + " | ".join(dcells) if dcells else "") + " |"
            )
        if shown:
            plots.append(_bench_plot(plt, out / f"bench_{_safe_name(bench)}.png", bench, shown, order, by_label))

    train_keys: list[str] = []
    if training_logs:
        pattern = re.compile(train_pattern)
        for _, rows in training_logs:
            for row in rows:
                for key in row:
                    if key != "step" and pattern.search(key) and key not in train_keys:
                        train_keys.append(key)
        train_keys = sorted(train_keys)[:MAX_TRAIN_PANELS]
        if train_keys:
            plots.append(_training_plot(plt, out / "training.png", training_logs, train_keys))
        md += ["", "## Training", ""]
        for label, rows in training_logs:
            last = rows[-1] if rows else {}
            md.append(f"- **{label}**: {len(rows)} steps (last step {last.get('step', '—')})")
        md.append(
            f"- metrics plotted (pattern `{train_pattern}`): " + (", ".join(f"`{k}`" for k in train_keys) or "none")
        )
    partial = any(c.partial for per in coverage.values() for c in per.values())
    if problems or partial:
        md += ["", "**⚠ partial comparison** (--allow-partial): every metric counts a missing item as a miss."]
        md += [f"- {p}" for p in problems]
    if plots:
        md += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]

    report_json = {
        "title": title,
        "baseline": baseline,
        "runs": order,
        "table": table,
        "metrics": {label: by_label[label] for label in order},
        "training": {label: list(rows) for label, rows in training_logs},
        "plots": [p.name for p in plots],
        "coverage": {label: {b: c.as_dict() for b, c in coverage.get(label, {}).items()} for label in order},
        "partial": bool(problems or partial),
        "warnings": problems,
    }
    md_path, json_path = out / "report.md", out / "report.json"
    _atomic_text(md_path, "\n".join(md) + "\n")
    _atomic_text(json_path, json.dumps(report_json, indent=2, ensure_ascii=False) + "\n")
    return Report(md_path, json_path, plots)


def _atomic_text(path: Path, text: str) -> None:
    from ..commands.common import atomic_writer

    with atomic_writer(path) as handle:
        handle.write(text)


def _atomic_png(fig: Any, path: Path) -> Path:
    from ..commands.common import atomic_writer

    with atomic_writer(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    return path


def _bench_plot(plt: Any, path: Path, bench: str, shown: list[str], order: list[str], by_label: Mapping) -> Path:
    import numpy as np

    n_runs = len(order)
    width = 0.8 / n_runs
    x = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(shown) * max(1, n_runs / 2) + 2), 4.2))
    colors = plt.get_cmap("tab10")
    for i, label in enumerate(order):
        vals = [by_label[label].get(bench, {}).get(m) for m in shown]
        heights = [np.nan if v is None else v for v in vals]
        style = {"color": "0.65", "hatch": "//", "edgecolor": "0.3"} if i == 0 else {"color": colors(i % 10)}
        bars = ax.bar(
            x + (i - (n_runs - 1) / 2) * width, heights, width, label=label + (" (baseline)" if i == 0 else ""), **style
        )
        for bar, v in zip(bars, vals, strict=True):
            if v is not None:
                ax.annotate(
                    f"{v:.3f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    ax.set_xticks(x, [f"{m} ↓" if m in LOWER_IS_BETTER else m for m in shown], rotation=20 if len(shown) > 4 else 0)
    ax.set_title(bench)
    ax.set_ylabel("value")
    top = max([v for label in order for m in shown if (v := by_label[label].get(bench, {}).get(m)) is not None] + [0])
    ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=min(4, n_runs), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    try:
        return _atomic_png(fig, path)
    finally:
        plt.close(fig)


def _training_plot(
    plt: Any, path: Path, logs: Sequence[tuple[str, Sequence[Mapping[str, float]]]], keys: list[str]
) -> Path:
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for label, log in logs:
            points = [(r["step"], r[key]) for r in log if key in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=label, marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    try:
        return _atomic_png(fig, path)
    finally:
        plt.close(fig)


__all__ = [
    "DEFAULT_TRAIN_PATTERN",
    "HEADLINE_METRICS",
    "LOWER_IS_BETTER",
    "Report",
    "Coverage",
    "build_report",
    "coverage_problems",
    "load_metrics",
    "load_run",
    "read_training_log",
]
