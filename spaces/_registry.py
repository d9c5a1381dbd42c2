"""One registry of search spaces, keyed by the torchvision model name."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

_SPACES: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_space(name: str) -> Callable[[T], T]:
    """Class decorator that registers a :class:`SearchSpace` under ``name``.

    Raises:
        ValueError: ``name`` is registered already.
    """

    def wrap(cls: T) -> T:
        if name in _SPACES:
            raise ValueError(f"Search space {name!r} is registered already "
                             f"(by {_SPACES[name].__qualname__}); pick another name.")
        _SPACES[name] = cls
        return cls

    return wrap


def list_spaces() -> list[str]:
    return sorted(_SPACES)


def get_space(name: str, **kwargs: Any) -> Any:
    """Build the space registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    if name not in _SPACES:
        raise ValueError(f"Unknown model/space {name!r}; valid names are {list_spaces()}.")
    return _SPACES[name](**kwargs)
