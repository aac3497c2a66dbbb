"""One exception type for every user-facing failure.

Stage entry points catch it and print its message as a single line (no traceback), so every
message must name the file or params key at fault and say what to do.
"""


class CrackdetError(Exception):
    """A problem with the user's input, params or environment, explained in one line."""


def first_line(exc: BaseException) -> str:
    """An underlying library error, cut to its first line so our messages stay one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
