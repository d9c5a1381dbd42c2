"""The MobileNetV2 space: torchvision's ``mobilenet_v2`` with per-group keep-ratios."""

from __future__ import annotations

from typing import Any

from torchvision.models import mobilenet_v2
from torchvision.models._utils import _make_divisible

from ._base import ChannelGroup
from ._registry import register_space
from ._torchvision import TorchvisionSpace

# torchvision's (expand ratio t, channels c, repeats n, stride s) per stage.
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


@register_space("mobilenet_v2")
class MobileNetV2Space(TorchvisionSpace):
    """Groups of torchvision's MobileNetV2.

    - ``stem``: output of ``features.0`` (also the depthwise width of ``features.1``).
    - ``stage1`` … ``stage7``: each stage's output width; the projections of all blocks in a
      stage are tied by residual adds, so they move together.
    - ``block2`` … ``block17``: the expanded (hidden) channels of ``features.<i>``.
    - ``last``: the final 1×1 conv (``features.18``, 1280 at width 1.0).
    """

    name = "mobilenet_v2"
    builder = staticmethod(mobilenet_v2)
    native_width = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._blocks = self._block_table()
        self._groups = self._group_table()

    # Block table: (feature index, stage, expand ratio, stride, residual) for features.1..17.
    def _block_table(self) -> list[tuple[int, int, int, int, bool]]:
        table, idx = [], 1
        for stage, (t, _c, n, s) in enumerate(_SETTING, start=1):
            for j in range(n):
                # A block adds its input only if it keeps resolution and width (j > 0).
                table.append((idx, stage, t, s if j == 0 else 1, j > 0))
                idx += 1
        return table

    def _stage_width(self, stage: int) -> int:
        if stage == 0:
            return _make_divisible(32 * self.width_mult, 8)
        return _make_divisible(_SETTING[stage - 1][1] * self.width_mult, 8)

    def _project_name(self, idx: int, t: int) -> str:
        return f"features.{idx}.conv.{1 if t == 1 else 2}"

    def _group_table(self) -> tuple[ChannelGroup, ...]:
        groups = [ChannelGroup("stem", self._stage_width(0), "features.0.0", ("features.0.0",))]
        for stage in range(1, len(_SETTING) + 1):
            projs = tuple(self._project_name(i, t) for i, st, t, _s, _r in self._blocks
                          if st == stage)
            groups.append(ChannelGroup(f"stage{stage}", self._stage_width(stage), projs[0], projs))
        for i, st, t, _s, _r in self._blocks:
            if t != 1:
                hidden = int(round(self._stage_width(st - 1 if i == self._first(st) else st) * t))
                name = f"features.{i}.conv.0.0"
                groups.append(ChannelGroup(f"block{i}", hidden, name, (name,)))
        last = _make_divisible(1280 * max(1.0, self.width_mult), 8)
        groups.append(ChannelGroup("last", last, "features.18.0", ("features.18.0",)))
        # Network order: stem, then for each stage its blocks' hidden groups and its width.
        order = {"stem": 0, "last": 10_000}
        for i, st, *_ in self._blocks:
            order[f"block{i}"] = 100 * st + i
            order[f"stage{st}"] = max(order.get(f"stage{st}", 0), 100 * st + 50)
        return tuple(sorted(groups, key=lambda g: order[g.name]))

    def _first(self, stage: int) -> int:
        return next(i for i, st, *_ in self._blocks if st == stage)

    @property
    def groups(self) -> tuple[ChannelGroup, ...]:
        return self._groups
