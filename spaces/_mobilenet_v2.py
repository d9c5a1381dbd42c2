"""The MobileNetV2 space: torchvision's ``mobilenet_v2`` with per-group keep-ratios."""

from __future__ import annotations

import functools
import re

from torchvision.models import mobilenet_v2

from ._base import ChannelGroup, SearchSpace
from ._registry import register_space
from ._torchvision import TorchvisionSpace
from ._trace import Coupling

# torchvision's (expand ratio t, channels c, repeats n, stride s) per stage.
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# Stage of each block ``features.<i>`` (i = 1 … 17).
_STAGE = {i: st for i, st in enumerate(
    (st for st, (_t, _c, n, _s) in enumerate(_SETTING, start=1) for _ in range(n)), start=1)}
_CONV = re.compile(r"features\.(\d+)\.conv\.(\d+)(?:\.0)?")


@register_space("mobilenet_v2")
class MobileNetV2Space(TorchvisionSpace):
    """Groups of torchvision's MobileNetV2.

    - ``stem``: output of ``features.0`` (also the depthwise width of ``features.1``).
    - ``stage1`` … ``stage7``: each stage's output width; the projections of all blocks in a
      stage are tied by residual adds, so they move together.
    - ``block2`` … ``block17``: the expanded (hidden) channels of ``features.<i>``.
    - ``last``: the final 1×1 conv (``features.18``, 1280 at width 1.0).

    Where torchvision's rounding gives a stage's first block the width of its input (stem
    and stage1 at width 0.25 and below: 8 channels each), that block adds its input too, so
    the two are one set of channels and one group, named after the earlier one.
    """

    name = "mobilenet_v2"
    builder = staticmethod(mobilenet_v2)
    native_width = True

    def name_group(self, coupling: Coupling) -> str | None:
        a = coupling.anchor
        if a == "features.0.0":
            return "stem"
        if a == "features.18.0":
            return "last"
        m = _CONV.fullmatch(a)
        if m is None:
            raise ValueError(f"mobilenet_v2: unexpected set of coupled channels at {a!r}.")
        i, j = int(m.group(1)), int(m.group(2))
        return f"block{i}" if j == 0 and _SETTING[_STAGE[i] - 1][0] != 1 else f"stage{_STAGE[i]}"

    @functools.cached_property
    def groups(self) -> tuple[ChannelGroup, ...]:
        # The order the space always had (each stage's blocks, then its width), not the
        # anchors' run order: Optuna samples groups in this order, so seeded runs repeat.
        # (typeshed types a cached_property read on its class as the function, not the property)
        base = SearchSpace.groups.func  # type: ignore[attr-defined]
        return tuple(sorted(base(self), key=lambda g: _order(g.name)))


def _order(group: str) -> int:
    if group in ("stem", "last"):
        return 0 if group == "stem" else 10_000
    i = int(group[len("block"):])  # "block<i>" or "stage<i>"
    return 100 * _STAGE[i] + i if group.startswith("block") else 100 * i + 50
