"""``autojudge-trt build --config``: validate, preflight, plan, then build or show the plan."""

from __future__ import annotations

import json
from pathlib import Path

import click

from autojudge.deploy.config import load_config
from autojudge.deploy.plan import make_plan, step_hashes
from autojudge.deploy.preflight import Check, Preflight, checks_as_json
from autojudge.deploy.runner import Manifest, run_plan

MARKS = {"ok": ("ok", "green"), "fail": ("FAIL", "red"), "unknown": ("unknown", "yellow")}


def run_build(config_path: Path, dry_run: bool = False, as_json: bool = False) -> int:
    """Exit status: 0 done (or a dry run whose configuration is sound), 2 a check failed."""
    config = load_config(config_path)
    checks = Preflight(config).run()
    steps = make_plan(config, config_path)
    manifest, hashes = Manifest(config.output_dir), step_hashes(steps)
    plan = [{"step": s.name, "title": s.title, "commands": s.shell(), "output": str(s.output),
             "status": "up to date" if manifest.complete(s, hashes[s.name]) else "to build"} for s in steps]
    config_failures = [c for c in checks if c.status == "fail" and c.kind == "config"]
    host_failures = [c for c in checks if c.status == "fail" and c.kind == "host"]
    report = {"config": json.loads(config.model_dump_json()), "preflight": checks_as_json(checks), "plan": plan,
              "dry_run": dry_run}
    if dry_run or config_failures or host_failures:
        if as_json:
            click.echo(json.dumps({**report, "ok": not config_failures if dry_run else False}, indent=2))
        else:
            _print_checks(checks)
            _print_plan(plan)
            _verdict(dry_run, config_failures, host_failures)
        return 2 if config_failures or (host_failures and not dry_run) else 0
    if not as_json:
        _print_checks(checks)
    echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    rows = run_plan(steps, config.output_dir, echo)
    from autojudge.deploy.triton_repo import serve_command

    serve = serve_command(config.output_dir / "triton_repo" / "models")
    if as_json:
        click.echo(json.dumps({**report, "ok": True, "summary": rows, "serve": serve}, indent=2))
    else:
        _print_summary(rows, config.output_dir / "triton_repo", serve)
    return 0


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _print_checks(checks: list[Check]) -> None:
    from rich.markup import escape

    console = _console()
    console.print("[bold]preflight[/]")
    for c in checks:
        word, style = MARKS[c.status]
        console.print(f"  [{style}]{word:<7}[/] {c.kind:<6} [bold]{escape(c.name)}[/]: {escape(c.detail)}")
        if c.fix and c.status != "ok":
            console.print(f"  {'':<7} {'':<6} fix: {escape(c.fix)}")


def _print_plan(plan: list[dict]) -> None:
    console = _console()
    console.print(f"[bold]plan[/] ({len(plan)} steps; each writes a temporary sibling of its output and renames it "
                  "into place when done)")
    for number, step in enumerate(plan, 1):
        console.print(f"[bold][{number}/{len(plan)}] {step['step']}[/]: {step['title']}  ({step['status']})")
        for command in step["commands"]:
            console.print(f"      $ {command}", markup=False)
        console.print(f"      -> {step['output']}", markup=False)


def _verdict(dry_run: bool, config_failures: list[Check], host_failures: list[Check]) -> None:
    from rich.markup import escape

    console = _console()
    if config_failures:
        console.print(f"[red]the deployment description has {len(config_failures)} problem(s)[/]: "
                      + escape("; ".join(f"{c.name}: {c.detail}" for c in config_failures)))
    if host_failures:
        names = ", ".join(c.name for c in host_failures)
        where = "a build on this machine would stop at preflight" if dry_run else "preflight failed, nothing was built"
        console.print(f"[yellow]{where}[/]: {names} (see the fix column)")
    if dry_run and not config_failures:
        console.print("dry run: nothing was run.")


def _print_summary(rows: list[dict], repo: Path, serve: str) -> None:
    from rich.table import Table

    table = Table(title="built", title_justify="left")
    for column in ("step", "status", "output", "size", "seconds"):
        table.add_column(column, justify="right" if column in ("size", "seconds") else "left", overflow="fold")
    for r in rows:
        table.add_row(r["step"], r["status"], r["output"], f"{r['bytes'] / 2**20:,.1f} MiB", f"{r['seconds']:.0f}")
    console = _console()
    console.print(table)
    console.print(f"Triton repository: {repo}", markup=False)
    console.print(f"serve it: {serve}", markup=False)
