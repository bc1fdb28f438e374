"""The one-line error convention of every command, in one place.

User mistakes (a bad flag or binding, a missing file, a directory of another family) are
reported as `error: <one line>` and a non-zero exit; real bugs keep their traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A run configuration that cannot work; reported as one line, exit code 1."""


def first_line(error: BaseException, max_chars: int | None = None) -> str:
    """An exception as one line: its first line, without the multi-kilobyte spec that
    tensorstore appends, or the exception's type name when it has no message."""
    lines = str(error).strip().splitlines()
    text = lines[0].split(" [tensorstore_spec=")[0] if lines else type(error).__name__
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars] + "..."
    return text
