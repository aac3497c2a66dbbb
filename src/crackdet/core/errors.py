"""One exception type for every user-facing failure.

Stage entry points and the CLI catch it and print its message as a single line (no traceback),
so every message must name the file or params key at fault and say what to do.
"""


class CrackdetError(Exception):
    """A problem with the user's input, params or environment, explained in one line."""


def first_line(value: object) -> str:
    """A library's message (an exception or a text) cut to its first non-empty line with runs of
    whitespace collapsed, so our messages stay one line; an empty exception gives its type."""
    for line in str(value).splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(value).__name__ if isinstance(value, BaseException) else ""


def error_lines(command: str, exc: BaseException) -> str:
    """How a command prints an error: one line per problem (a params file can hold several),
    each ``crackdet <command>: error: …``."""
    lines = str(exc).splitlines() or [""]
    return "\n".join(f"crackdet {command}: error: {line}" for line in lines)
