"""Errors a user can act on: each message names the file, field or setting at fault."""


class DataError(ValueError):
    """A data set file or folder is missing or malformed."""


class ConfigError(ValueError):
    """A training or study setting is invalid."""


class TestLabelsLocked(PermissionError):
    """Test labels were asked for from a corpus loaded without them (every search is)."""

    __test__ = False  # a name pytest would otherwise collect


class TrainingDiverged(RuntimeError):
    """The loss or the predictions stopped being finite numbers."""
