"""The one exception type for mistakes a user can cause and fix.

The CLI prints ``EffcnError`` messages as one sentence without a traceback and exits with the
error's ``exit_status`` (2; 130 for an interrupted training); anything else is a bug and keeps
its traceback.
"""


class EffcnError(Exception):
    """A user-fixable problem: the message names the cause and the fix."""

    exit_status = 2


class DataError(EffcnError):
    """Missing, truncated or corrupt data files, failed downloads."""


class ConfigError(EffcnError):
    """Unknown config keys, wrong types, out-of-range values."""


class CheckpointError(EffcnError):
    """Checkpoints that are corrupt, unsafe, or belong to another model."""


class Interrupted(EffcnError):
    """Training stopped by Ctrl-C; the message says where and how to resume."""

    exit_status = 130
