"""One registry of search spaces, keyed by the torchvision model name."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from prunetune._registry import Registry

_SPACES: Registry[type] = Registry("search space")
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
        _SPACES.add(name, cls)
        return cls

    return wrap


def list_spaces() -> list[str]:
    return sorted(_SPACES)


def get_space(name: str, **kwargs: Any) -> Any:
    """Build the space registered under ``name``; any other torchvision classification model
    name, a ``timm:NAME`` and a ``FILE.py:CALLABLE`` factory get a space grouped
    automatically (:func:`auto_space`, :func:`custom_space`).

    Raises:
        ValueError: ``name`` is none of these (the message lists the valid names), or names a
            network that cannot be built or traced (the message says why).
    """
    if name in _SPACES:
        return _SPACES[name](**kwargs)
    from ._custom import custom_space, is_custom
    from ._torchvision import auto_space

    if is_custom(name):
        return custom_space(name, **kwargs)

    cls = auto_space(name)
    if cls is None:
        raise ValueError(f"Unknown model/space {name!r}; valid names are {list_spaces()}, or "
                         f"any torchvision classification model "
                         f"(torchvision.models.list_models(module=torchvision.models)), "
                         f"timm:NAME, or FILE.py:CALLABLE.")
    return cls(**kwargs)
