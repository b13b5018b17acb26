"""The one error type users see: a one-line message, exit code 2, no traceback."""


class DistillError(Exception):
    """A problem with the user's input (recipe, data, models) that they can fix.

    The CLI prints ``distill: error: <message>`` and exits with code 2. Raise it before anything is
    written, so that bad input never leaves a half-written output folder.
    """

    def __init__(self, message: str):
        # Keep it on one line: callers often pass on a library's multi-line message.
        super().__init__(" ".join(str(message).split()))
