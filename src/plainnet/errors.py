"""The one exception type for mistakes a user can fix (bad option, missing or corrupt file).

The CLI prints such an error as a single line on stderr and exits with status 2; everything
else is an internal bug and keeps its traceback.
"""

import re


class UserError(Exception):
    """A problem caused by the user's input, reported without a traceback."""


def one_line(message: object) -> str:
    """The first line of ``str(message)``, at most 200 characters, without terminal escapes or
    other control characters: a library's text quoted in a `UserError` must keep it one line.
    An exception with no text gives its type's name."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(message)).strip().splitlines()
    text = "".join(c for c in (lines[0] if lines else "") if c.isprintable())[:200]
    return text or (type(message).__name__ if isinstance(message, BaseException) else "")
