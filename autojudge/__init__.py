"""AutoJudge speculative decoding: mine important mismatches, train a judge, accept the rest.

The subpackages follow the data flow (README.md, "Layout"): tasks -> mining -> features ->
judge -> acceptance -> decoding -> evaluation / serving / deploy -> cli, over models and
storage. The method: arXiv 2504.20039; the command line: ``autojudge-trt --help``.
"""

from autojudge.errors import AutoJudgeError

__version__ = "0.1.0"
__all__ = ["AutoJudgeError", "__version__"]
