"""Errors whose message is meant for the user.

run_train.py prints a `UserError` as one line (no traceback) and exits with code 2. Library
code raises it (or a subclass) for bad input: a flag value, a missing file or dataset, a layer
name that does not exist. It subclasses ValueError so library users can catch either.
"""


class UserError(ValueError):
    """Bad input from the user: one line naming the flag/argument/file and the bad value."""


class IncompatibleCheckpointError(UserError):
    """model_dir holds a checkpoint from a different configuration."""


class NonFiniteError(RuntimeError):
    """The loss (or a weight) became NaN or inf; the last good checkpoint is kept."""


class Preempted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved and the run can be resumed."""

    EXIT_CODE = 3
