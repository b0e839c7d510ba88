"""Tasks: how prompts are formatted and results scored (see :mod:`autojudge.tasks.base`).

Built in: ``gsm8k`` (final-number equality), ``humaneval`` (unit tests in a sandbox) and
``testbed`` (synthetic problems whose right answers are known, :mod:`autojudge.testbed`).
A task of your own is named by import path (``package.module:attribute``) or registered
under the entry-point group ``autojudge.tasks``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from autojudge.tasks.base import Example, Guarded, Task, TaskError, TaskOutputError

BUILTIN = {"gsm8k": "autojudge.tasks.gsm8k:GSM8K", "humaneval": "autojudge.tasks.humaneval:HumanEval",
           "testbed": "autojudge.testbed.task:Testbed"}
ENTRY_POINT_GROUP = "autojudge.tasks"

__all__ = ["BUILTIN", "Example", "Guarded", "Task", "TaskError", "TaskOutputError", "get_task", "task_names"]


def task_names() -> list[str]:
    return sorted({*BUILTIN, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def get_task(spec: str) -> Task:
    """A task by built-in name, entry-point name, or ``package.module:attribute``."""
    if spec in BUILTIN:
        return _instantiate(_import(BUILTIN[spec]), spec)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            return _instantiate(ep.load(), spec)
    if ":" in spec:
        return _instantiate(_import(spec), spec)
    raise TaskError(f"unknown task {spec!r}: use one of {', '.join(task_names())} "
                    "or an import path such as mypackage.tasks:MyTask")


def _import(path: str):
    module_name, _, attribute = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise TaskError(f"cannot import task {path!r}: {exc}") from exc


def _instantiate(obj, spec: str) -> Task:
    task = obj() if isinstance(obj, type) else obj
    missing = [m for m in ("load", "prompt", "result", "determined", "same", "is_correct", "name")
               if not hasattr(task, m)]
    if missing:
        raise TaskError(f"task {spec!r} lacks {', '.join(missing)} (see autojudge.tasks.base.Task)")
    return task
