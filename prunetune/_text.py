"""The first line of an exception's message: what a one-line refusal quotes of an error from
torch, Torch-Pruning, Ray or SQLAlchemy (theirs often run to many lines). Imports nothing, so
every layer can use it."""

from __future__ import annotations


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of ``e``'s message, at most ``limit`` characters, or its type's name
    when the message is empty (``pickle.UnpicklingError()`` has none)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]
