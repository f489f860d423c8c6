"""The two kinds of failure the CLI tells apart (exit 2 vs exit 1).

Raise `BadInput` for anything the user can fix (a missing file, a wrong format, an option out of
range): the message is printed as one line and the exit code is 2. Raise `LegoError` for a runtime
failure that is not the user's input (exit 1). Messages say what, where, and what to do.
"""


class LegoError(Exception):
    """A runtime failure: exit code 1."""

    exit_code = 1


class BadInput(LegoError):
    """Bad usage or bad input the user can fix: exit code 2."""

    exit_code = 2
