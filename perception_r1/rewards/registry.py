"""The task registry: ``data_source`` -> how to score a response for it.

A :class:`Task` bundles the pure pieces the scoring engine needs. Rule components are computed in-process;
an optional :class:`IsolatedCheck` (slow or risky work such as math-verify) runs in a worker process with a hard
time limit and is memoized; an optional judge step asks the judge LLM about annotations. ``combine`` turns the
components into the scalar ``score``. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

Components = dict[str, float | None]


@dataclass(frozen=True)
class IsolatedCheck:
    """A pure check run off the main process under a hard time limit, memoized by ``key``.

    ``key(response, ground_truth, settings)`` returns a hashable, picklable key (or ``None`` to skip the check and
    use ``default``); ``fn(key, settings)`` must be a module-level function (it is pickled to a worker process) and
    returns a float. Rows with equal keys share one evaluation: GRPO groups repeat answers.
    """

    component: str
    key: Callable[[str, Any, Any], Hashable | None]
    fn: Callable[[Hashable, Any], float]
    timeout_s: Callable[[Any], float]
    default: float = 0.0
    shortcut: Callable[[Hashable], float | None] | None = None
    """Optional cheap in-process verdict for a key (``None``: undecided, run ``fn``). It must agree with ``fn``
    wherever it answers; it exists because most GRPO answers are trivially right or wrong."""


@dataclass(frozen=True)
class Task:
    """How one ``data_source`` is scored.

    - ``settings``: a dataclass whose fields (all with defaults) are this task's run settings (``--set k=v``).
    - ``validate(ground_truth, extra_info)``: raises ``ValueError`` naming the field when ground truth is malformed.
    - ``rule_components(response, ground_truth, extra_info, settings)``: pure; never raises on model output.
    - ``combine(components, settings)``: the scalar score from the components.
    - ``isolated``: optional slow/risky check (see :class:`IsolatedCheck`).
    - ``annotations(extra_info)``: optional judge step; returns the annotations to verify (``None``/empty: no judge).
    - ``output_keys``: the component names every output row carries, in order (``score`` first is implied).
    - ``check_settings(extra_info, settings)``: optional; raises ``ValueError`` naming the field when a row
      contradicts the run's settings (e.g. data built for another coordinate frame). See :func:`validate_row`.
    """

    data_source: str
    settings: type
    validate: Callable[[Any, Mapping[str, Any]], None]
    rule_components: Callable[[str, Any, Mapping[str, Any], Any], Components]
    combine: Callable[[Components, Any], float]
    output_keys: tuple[str, ...]
    isolated: IsolatedCheck | None = None
    annotations: Callable[[Mapping[str, Any]], list[str] | None] | None = None
    check_settings: Callable[[Mapping[str, Any], Any], None] | None = None


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Register ``task`` under its ``data_source``; re-registering the same name with another task is an error."""
    if "score" in task.output_keys:  # every output row starts with it; listed twice, verl's stacking would break
        raise ValueError(f"task {task.data_source!r}: output_keys must not list 'score' (it is always first)")
    existing = _TASKS.get(task.data_source)
    if existing is not None and existing is not task:
        raise ValueError(f"data_source {task.data_source!r} is already registered")
    _TASKS[task.data_source] = task
    return task


def _load_builtin_tasks() -> None:
    # Importing the task modules registers them; entry points let other packages add tasks.
    from importlib import import_module
    from importlib.metadata import entry_points

    for module in _BUILTIN_TASK_MODULES:
        import_module(module)
    for ep in entry_points(group="perception_r1.tasks"):
        ep.load()


_BUILTIN_TASK_MODULES = (
    "perception_r1.rewards.geo3k_visual",
    "perception_r1.rewards.grounding",
    "perception_r1.rewards.counting",
    "perception_r1.rewards.ocr",
    "perception_r1.rewards.detection",
)
_loaded = False


def registered_tasks() -> dict[str, Task]:
    """All registered tasks by ``data_source`` (built-ins and entry-point plugins)."""
    global _loaded
    if not _loaded:
        _loaded = True  # pragma: no mutate (equivalent: None only rescans the cached imports and entry points per call)
        _load_builtin_tasks()
    return dict(_TASKS)


def get_task(data_source: str) -> Task:
    """The task for ``data_source``; ``KeyError`` with the known names otherwise."""
    tasks = registered_tasks()
    try:
        return tasks[data_source]
    except KeyError:
        raise KeyError(f"unknown data_source {data_source!r}; known: {sorted(tasks)}") from None


def validate_row(task: Task, ground_truth: Any, extra_info: Mapping[str, Any], settings: Any = None) -> None:
    """Check one row before scoring: its ground truth, and (given the run's ``settings``) that it agrees with them.

    ``ValueError`` naming the field. Every caller that knows the run's settings (the scoring engine, ``score``,
    the launch preflight) should validate through here, so a row built for another coordinate frame is refused
    before any scoring instead of being scored in the wrong place.
    """
    task.validate(ground_truth, extra_info)
    if settings is not None and task.check_settings is not None:
        task.check_settings(extra_info, settings)


# ---------------------------------------------------------------- settings


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a ``--set`` string (or a config value) to the field's declared type (a resolved annotation, as
    ``typing.get_type_hints`` returns it)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            return None
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ValueError(f"setting {key!r}: expected one of {list(choices)}, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"setting {key!r}: expected a boolean, got {value!r}")
    if annotation in (int, float, str):
        try:
            return annotation(value)
        except (TypeError, ValueError):
            raise ValueError(f"setting {key!r}: expected {annotation.__name__}, got {value!r}") from None
    return value


PRESET_KEY = "preset"
"""The settings key that selects a named preset (``--set preset=paper``, ``reward.reward_kwargs.preset=paper``)."""


def presets_of(settings_cls: type) -> dict[str, dict[str, Any]]:
    """The named presets a settings class declares (its ``PRESETS`` class attribute: ``{name: {field: value}}``)."""
    return dict(getattr(settings_cls, "PRESETS", None) or {})


def known_presets() -> list[str]:
    """Every preset name a registered task declares, sorted."""
    return sorted({name for task in registered_tasks().values() for name in presets_of(task.settings)})


def selected_preset(overrides: Mapping[str, Any]) -> str | None:
    """The preset name ``overrides`` selects, or ``None`` when it selects none (absent, empty, ``none``, ``default``).

    A name that no registered task declares is a ``ValueError`` naming the setting and the known presets: a typo
    must not silently train with the defaults.
    """
    name = overrides.get(PRESET_KEY)
    if name is None or (isinstance(name, str) and name.strip().lower() in {"", "none", "default"}):
        return None
    name = str(name).strip()
    known = known_presets()
    if name not in known:
        raise ValueError(f"setting {PRESET_KEY!r}: unknown preset {name!r}; known presets: {known}")
    return name


def apply_preset(settings_cls: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` with the selected preset's values for ``settings_cls`` filled in underneath.

    Presets are per settings class, because one key can mean a different value per task (``format_weight`` is
    0.1 in the geo3k paper and 1.0 in the perception paper). Explicit keys always win over the preset; a preset
    that only other tasks declare pins nothing here. An unknown preset name is a ``ValueError``
    (:func:`selected_preset`).
    """
    name = selected_preset(overrides)
    out = {k: v for k, v in overrides.items() if k != PRESET_KEY}
    if name is None:
        return out
    return {**presets_of(settings_cls).get(name, {}), **out}


def build_settings(settings_cls: type, overrides: Mapping[str, Any]) -> Any:
    """Instantiate ``settings_cls`` from the overrides whose keys are its fields (others are ignored).

    A ``preset`` key fills in the preset's values first (:func:`apply_preset`); explicit keys override them.
    """
    overrides = apply_preset(settings_cls, overrides)
    hints = typing.get_type_hints(settings_cls)
    kwargs = {}
    for f in dataclasses.fields(settings_cls):
        if f.name in overrides:
            kwargs[f.name] = _coerce(overrides[f.name], hints[f.name], f.name)
    return settings_cls(**kwargs)


def known_setting_keys() -> set[str]:
    """Every settings key any registered task understands (and ``preset``)."""
    return {PRESET_KEY} | {f.name for task in registered_tasks().values() for f in dataclasses.fields(task.settings)}


def check_setting_keys(overrides: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first override no task understands (a typo must not be ignored), or an
    unknown preset name."""
    known = known_setting_keys()
    for key in overrides:
        if key not in known:
            raise ValueError(f"unknown setting {key!r}; known settings: {sorted(known)}")
    selected_preset(overrides)


def parse_set_options(items: list[str] | None) -> dict[str, str]:
    """Parse ``["k=v", ...]`` from ``--set`` into a dict; ``ValueError`` on an item without ``=``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out
