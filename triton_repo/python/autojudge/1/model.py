"""Triton loads this file; the model itself lives in the autojudge package."""

from autojudge.serving.triton_model import TritonPythonModel  # noqa: F401
