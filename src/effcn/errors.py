"""The one exception type for mistakes a user can cause and fix.

The CLI prints ``EffcnError`` messages as one sentence without a traceback and exits with
status 2; anything else is a bug and keeps its traceback.
"""


class EffcnError(Exception):
    """A user-fixable problem: the message names the cause and the fix."""


class DataError(EffcnError):
    """Missing, truncated or corrupt data files, failed downloads."""


class ConfigError(EffcnError):
    """Unknown config keys, wrong types, out-of-range values."""


class CheckpointError(EffcnError):
    """Checkpoints that are corrupt, unsafe, or belong to another model."""
