"""Run a build plan: skip what is complete, build the rest atomically, record a manifest.

``OUTPUT_DIR/manifest.json`` records, per finished step, the hash of its inputs
(:func:`autojudge.deploy.plan.step_hashes`) and the size of every file it produced. A step
is skipped only when its hash is unchanged and all those files are still there with those
sizes. A step runs in a temporary sibling of its output directory
(``.NAME.partial-*``) and is renamed into place only after all its commands succeeded;
the manifest is written after that. Leftover partial directories (a killed run) are
removed at the next start, never trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from autojudge.deploy.plan import Step, step_hashes
from autojudge.errors import AutoJudgeError
from autojudge.storage import atomic_write_bytes

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "autojudge.build/v1"


class BuildStepError(AutoJudgeError):
    """A step's command failed; the message names the step, the command and the log."""


class Manifest:
    def __init__(self, root: Path):
        self.path = root / MANIFEST
        self.steps: dict[str, dict] = {}
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("format") == MANIFEST_FORMAT:
                self.steps = data["steps"]

    def complete(self, step: Step, digest: str) -> bool:
        entry = self.steps.get(step.name)
        if not entry or entry["hash"] != digest or not step.output.is_dir():
            return False
        return all((step.output / name).is_file() and (step.output / name).stat().st_size == size
                   for name, size in entry["files"].items())

    def record(self, step: Step, digest: str, seconds: float) -> None:
        files = {str(p.relative_to(step.output)): p.stat().st_size for p in step.output.rglob("*") if p.is_file()}
        self.steps[step.name] = {"hash": digest, "output": str(step.output), "files": files,
                                 "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self._save()

    def forget(self, name: str) -> None:
        if self.steps.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        data = {"format": MANIFEST_FORMAT, "steps": self.steps}
        atomic_write_bytes(self.path, (json.dumps(data, indent=2) + "\n").encode())


def run_plan(steps: list[Step], root: Path, echo: Callable[[str], None] = print) -> list[dict]:
    """Run every incomplete step in order; return one summary row per step."""
    root.mkdir(parents=True, exist_ok=True)
    manifest, hashes = Manifest(root), step_hashes(steps)
    _remove_partials(steps)
    rows = []
    for number, step in enumerate(steps, 1):
        header = f"[{number}/{len(steps)}] {step.name}: {step.title}"
        if manifest.complete(step, hashes[step.name]):
            echo(f"{header} - up to date, skipped")
            rows.append(_row(step, "skipped", manifest.steps[step.name]["seconds"]))
            continue
        echo(header)
        manifest.forget(step.name)  # from here on its old output is not trusted
        started = time.perf_counter()
        _run_step(step, root / "logs" / f"{step.name}.log", echo)
        seconds = time.perf_counter() - started
        manifest.record(step, hashes[step.name], seconds)
        echo(f"      done in {seconds:.0f} s -> {step.output}")
        rows.append(_row(step, "built", seconds))
    return rows


def _run_step(step: Step, log_path: Path, echo: Callable[[str], None]) -> None:
    step.output.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{step.output.name}.partial-", dir=step.output.parent))
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            for command in step.rendered(staging):
                echo(f"      $ {' '.join(command)}")
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                           env={**os.environ, **step.env})
                for line in process.stdout:
                    log.write(line)
                    echo(f"      | {line.rstrip()}")
                if process.wait() != 0:
                    raise BuildStepError(f"step {step.name} failed: `{command[0]}` exited with status "
                                         f"{process.returncode}; full log: {log_path}. Fix the cause and re-run: "
                                         "finished steps are skipped.")
        _publish(staging, step.output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, final: Path) -> None:
    """Swap ``staging`` in as ``final``; an old ``final`` is moved aside first, then deleted."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.partial-old-{os.getpid()}")
        os.rename(final, old)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_partials(steps: list[Step]) -> None:
    for step in steps:
        if step.output.parent.is_dir():
            for leftover in step.output.parent.glob(f".{step.output.name}.partial-*"):
                shutil.rmtree(leftover, ignore_errors=True)


def _row(step: Step, status: str, seconds: float) -> dict:
    size = sum(p.stat().st_size for p in step.output.rglob("*") if p.is_file())
    return {"step": step.name, "status": status, "output": str(step.output), "bytes": size,
            "seconds": round(seconds, 1)}
