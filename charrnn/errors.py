"""The one exception type a user may see: the CLI prints its message as one line and exits non-zero."""


class CharrnnError(Exception):
    """A problem with the user's input, files or environment (not a bug in charrnn).

    The message is one line that names the problem; `exit_code` is what the CLI exits with.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
