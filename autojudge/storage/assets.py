"""Files the package ships beside its code, found whatever the install layout.

In a checkout they are the repository's own folders; in an installed wheel they are copies
inside the package (``[tool.hatch.build.targets.wheel.force-include]`` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

from autojudge.errors import AutoJudgeError

PACKAGE = Path(__file__).resolve().parents[1]  # autojudge/
CHECKOUT = PACKAGE.parent

# name -> (where it is in a checkout, where it is in a wheel, a file that must be there)
ASSETS: dict[str, tuple[Path, Path, str]] = {
    "plugin": (CHECKOUT / "plugins" / "judgeAcceptPlugin", PACKAGE / "plugins" / "judgeAcceptPlugin",
               "judgeAcceptRule.h"),  # the TensorRT plugin's sources
    "triton_repo": (CHECKOUT / "triton_repo", PACKAGE / "triton_repo",
                    "python/autojudge/config.pbtxt"),  # the Triton model repository templates
    "build_steps": (CHECKOUT / "build", PACKAGE / "build_steps", "build_engine.py"),  # `build --config` steps
    "drafts": (PACKAGE / "drafts", PACKAGE / "drafts", "smollm2-135m-instruct/draft.json"),  # shipped drafts
    "testbed_pair": (PACKAGE / "testbed" / "pair", PACKAGE / "testbed" / "pair",
                     "target/model.safetensors"),  # the testbed's trained target and draft
    "task_data": (PACKAGE / "tasks" / "data", PACKAGE / "tasks" / "data", "gsm8k/test.jsonl.gz"),  # GSM8K files
}


def asset(name: str) -> Path:
    """The folder of a packaged asset (a key of :data:`ASSETS`)."""
    checkout, wheel, marker = ASSETS[name]
    for candidate in (checkout, wheel):
        if (candidate / marker).is_file():
            return candidate
    raise AutoJudgeError(f"the packaged {name} files are missing from this installation (looked for {marker} "
                         f"in {checkout} and {wheel}); reinstall autojudge.")
