"""Errors a user can act on: each message names the file, field or setting at fault."""
from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input a user can fix; a command prints it as one line and exits with status 2."""


class DataError(UserError, ValueError):
    """A data set file or folder is missing or malformed."""


class ConfigError(UserError, ValueError):
    """A training or study setting is invalid; `field` names it, for callers that say where it came from."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class TrainingDiverged(UserError, RuntimeError):
    """The loss or the predictions stopped being finite numbers (settings that cannot train, e.g. lr 1e3)."""


class TestLabelsLocked(PermissionError):
    """Test labels were asked for from a corpus loaded without them (every search is)."""

    __test__ = False  # a name pytest would otherwise collect


def run_command(body: Callable[[], object]) -> int:
    """A command's exit status: 0, or 2 after one 'error: ...' line for a UserError."""
    try:
        body()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
