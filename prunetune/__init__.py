"""prunetune: automated structured-pruning policy search for CNNs.

The design card's folders are one pipeline, installed as subpackages of this one:
``prunetune.spaces`` → ``prunetune.evaluators`` → ``prunetune.search`` → ``prunetune.cli``
(the ``prunetune`` command; ``python launch.py`` in a checkout). ``prunetune.search(model,
budget, train=..., val=...)`` is the Python API (:mod:`prunetune._api`; the subpackage is
callable). In a checkout that is not installed, the repository root is added to this
package's path, so the same names resolve to the same folders.
"""

import os as _os

__version__ = "0.1.0"

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (_os.path.isfile(_os.path.join(_root, "launch.py"))
        and _os.path.isdir(_os.path.join(_root, "spaces")) and _root not in __path__):
    __path__.append(_root)


__all__ = ["SearchResult", "__version__", "search"]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: imported on first use, not with the package
    if name == "search":
        import importlib

        return importlib.import_module("prunetune.search")
    if name == "SearchResult":
        from prunetune._api import SearchResult

        return SearchResult
    raise AttributeError(f"module 'prunetune' has no attribute {name!r}")
