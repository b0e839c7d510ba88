"""Errors a user can act on. The CLI prints their message and exits with status 2."""


class AutoJudgeError(Exception):
    """Base class: the message says what was wrong and how to fix it."""


class ModelLoadError(AutoJudgeError):
    """A draft or target model could not be found or loaded."""


class IncompatibleModelsError(AutoJudgeError):
    """Draft and target do not share a tokenizer token-for-token."""


class JudgeArtifactError(AutoJudgeError):
    """A judge artifact is missing, corrupt, or made for other models."""


class MissingDependencyError(AutoJudgeError):
    """An optional package or tool this command needs is not installed."""
