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
    """Build the space registered under ``name``; any other torchvision classification model
    name gets a space grouped automatically (:func:`auto_space`).

    Raises:
        ValueError: ``name`` is neither; the message lists the valid names.
    """
    if name in _SPACES:
        return _SPACES[name](**kwargs)
    from ._torchvision import auto_space

    cls = auto_space(name)
    if cls is None:
        raise ValueError(f"Unknown model/space {name!r}; valid names are {list_spaces()}, or "
                         f"any torchvision classification model "
                         f"(torchvision.models.list_models(module=torchvision.models)).")
    return cls(**kwargs)
