"""The one-line error convention of every command, in one place.

User mistakes (a bad flag or binding, a missing or damaged file, a directory of another
family) raise `UserError` (or an OSError from the file system) and are reported as
`error: <one line>` with a non-zero exit. Every other exception is a bug in this project or
a library, and keeps its traceback: a bare ValueError is not taken for the user's fault.
"""

from __future__ import annotations

import sys


class UserError(ValueError):
    """A mistake in what the user gave (configuration, flags, input files); one line, exit 1.

    A ValueError, so that callers (and tests) that expect one still catch it.
    """


# What every command reports as one line; anything else keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)


def main_with_one_line_errors(run, argv=None, exit_code: int = 2) -> int:
    """`run(argv)` as a command: a user error is printed as `error: <one line>` and returns
    `exit_code`; anything else keeps its traceback."""
    try:
        return run(argv)
    except USER_ERRORS as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return exit_code


def first_line(error: BaseException, max_chars: int | None = None) -> str:
    """An exception as one line: its first line, without the multi-kilobyte spec that
    tensorstore appends, or the exception's type name when it has no message."""
    lines = str(error).strip().splitlines()
    text = lines[0].split(" [tensorstore_spec=")[0] if lines else type(error).__name__
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + "..."
    return text
