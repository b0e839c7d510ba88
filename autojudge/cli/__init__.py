"""The ``autojudge-trt`` command line, one module per stage. Heavy imports (torch,
transformers) happen inside commands so that ``--help`` stays instant.

Where things are: ``app`` (the root group ``main``: --version, -h/--help, AutoJudgeError as
a one-line error), ``options`` (what commands share: model options, window/mode/progress/json
options, model and judge loading), ``decode`` (generate), ``draft`` (draft distill, draft
eval), ``judge`` (mine, merge, train, calibrate, eval), ``quickstart``, ``serve`` (repo, serve, client),
``build`` (build, build judge, export-onnx), ``testbed`` (make-pair, report). The command tree is assembled here.
"""

from __future__ import annotations

from autojudge.cli import build, decode, draft, judge, quickstart, serve, testbed
from autojudge.cli.app import main

for command in (decode.generate, draft.draft,
                judge.mine, judge.merge, judge.train, judge.calibrate, judge.eval_command,
                quickstart.quickstart, testbed.testbed,
                build.build, build.export_onnx_command,
                serve.repo, serve.serve, serve.client):
    main.add_command(command)
del command

__all__ = ["main"]
