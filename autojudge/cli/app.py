"""The root ``autojudge-trt`` group: --version, -h/--help, and AutoJudgeError as a one-line error."""

from __future__ import annotations

import sys

import click

from autojudge.errors import AutoJudgeError


class _Group(click.Group):
    """Turns AutoJudgeError into a one-line message and exit status 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AutoJudgeError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autojudge")
def main() -> None:
    """AutoJudge speculative decoding: a draft proposes, the target verifies, and a tiny
    learned judge accepts the mismatches that do not change the answer (arXiv 2504.20039)."""
