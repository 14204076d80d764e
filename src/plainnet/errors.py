"""The one exception type for mistakes a user can fix (bad option, missing or corrupt file).

The CLI prints such an error as a single line on stderr and exits with status 2; everything
else is an internal bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem caused by the user's input, reported without a traceback."""
