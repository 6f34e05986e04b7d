"""Pure scoring: response text + ground truth -> score and named components, registered by ``data_source``."""

from .registry import (
    Components,
    IsolatedCheck,
    Task,
    build_settings,
    check_setting_keys,
    get_task,
    known_presets,
    parse_set_options,
    register_task,
    registered_tasks,
    validate_row,
)

__all__ = [
    "Components",
    "IsolatedCheck",
    "Task",
    "build_settings",
    "check_setting_keys",
    "get_task",
    "known_presets",
    "parse_set_options",
    "register_task",
    "registered_tasks",
    "validate_row",
]
