"""The errors users see: a one-line message and an exit code, no traceback."""


class DistillError(Exception):
    """A problem with the user's input (recipe, data, models, disk) that they can fix.

    The CLI prints ``distill: error: <message>`` and exits with ``exit_code`` (2). Raise it before
    anything is written, so that bad input never leaves a half-written output folder.
    """

    exit_code = 2

    def __init__(self, message: str):
        # Keep it on one line: callers often pass on a library's multi-line message.
        super().__init__(" ".join(str(message).split()))


class RunFailed(DistillError):
    """The run itself went wrong (training diverged, a saved model does not reproduce the trained
    one): exit code 3. Nothing of the failed stage is saved or reported; earlier checkpoints stay."""

    exit_code = 3
