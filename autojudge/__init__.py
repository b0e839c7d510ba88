"""AutoJudge speculative decoding: mine important mismatches, train a judge, accept the rest.

See ``docs`` in the repository README for the method (arXiv 2504.20039) and the CLI.
"""

from autojudge.errors import AutoJudgeError

__version__ = "0.1.0"
__all__ = ["AutoJudgeError", "__version__"]
