"""Errors as one line: what a manifest row, a CLI message or a wrapped library error holds.

The lowest layer: formats, store and the job all shorten messages here, so every error
a user reads has the same shape.
"""

from __future__ import annotations


def one_line_text(text: str, limit: int = 500) -> str:
    """`text` without a traceback some libraries embed, whitespace (newlines too) collapsed,
    cut to `limit` characters with an ellipsis."""
    text = " ".join(str(text).split("Traceback (most recent call last)")[0].split())
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def one_line(error: BaseException, limit: int = 500) -> str:
    """An exception as one line: its message (the type name when empty; "out of memory"
    for an empty MemoryError; numpy's _ArrayMemoryError keeps its "Unable to allocate ...")."""
    line = one_line_text(str(error), limit)
    if line:
        return line
    if isinstance(error, MemoryError):
        return "out of memory"
    return one_line_text(type(error).__name__, limit)
