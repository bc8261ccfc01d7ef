"""The one exception type for user mistakes.

Every bad input a user can give (an unknown preset, a malformed profile, a negative size)
raises `NeoError` with a message that names the input and the fix. The command-line tools print
that message as one line and exit with status 2; nothing else is caught there, so a stack trace
always means a bug in neo, not in the input.
"""


class NeoError(ValueError):
    """A user-facing error: bad input, with a message that says what and how to fix it.
    `param`: the request field at fault, where there is one (neo-serve's 400 names it)."""

    def __init__(self, message: str = "", *, param: str | None = None):
        super().__init__(message)
        self.param = param
