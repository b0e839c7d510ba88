"""Append-only JSONL files that survive crashes: one record per line, fsynced per append.

A crash can leave only a torn *last* line (no newline); readers ignore it and writers cut
it before appending. Anything else that is not a JSON object is corruption: it is
reported with its file and line, never skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from autojudge.errors import AutoJudgeError


class CorruptRecordError(AutoJudgeError):
    """A complete line of an append-only file is not a JSON object."""


def read_records(path: Path) -> list[dict]:
    """Every complete record of ``path`` ([] if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # a torn tail from a crash mid-write
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorruptRecordError(
                    f"{path}:{number}: corrupt record ({exc.msg}); fix or delete that line, "
                    "then re-run to recompute it") from exc
            if not isinstance(record, dict):
                raise CorruptRecordError(f"{path}:{number}: expected a JSON object")
            records.append(record)
    return records


def drop_torn_tail(path: Path) -> None:
    """Cut a partial last line (left by a crash) so that appends start on a fresh line."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)


def append_records(f, records: Iterable[dict]) -> None:
    """Append ``records`` to the open text file ``f`` and make them durable."""
    for record in records:
        f.write(json.dumps(record, separators=(",", ":")) + "\n")
    f.flush()
    os.fsync(f.fileno())


def jsonable(value):
    """``value`` if JSON can hold it, else its repr (task results may be any hashable)."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)
