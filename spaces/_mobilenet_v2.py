"""The MobileNetV2 space: torchvision's ``mobilenet_v2`` with per-group keep-ratios."""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn
from torchvision.models import mobilenet_v2
from torchvision.models._utils import _make_divisible

from ._base import ChannelGroup, LayerShape, SearchSpace
from ._registry import register_space

# torchvision's (expand ratio t, channels c, repeats n, stride s) per stage.
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


@register_space("mobilenet_v2")
class MobileNetV2Space(SearchSpace):
    """Groups of torchvision's MobileNetV2.

    - ``stem``: output of ``features.0`` (also the depthwise width of ``features.1``).
    - ``stage1`` … ``stage7``: each stage's output width; the projections of all blocks in a
      stage are tied by residual adds, so they move together.
    - ``block2`` … ``block17``: the expanded (hidden) channels of ``features.<i>``.
    - ``last``: the final 1×1 conv (``features.18``, 1280 at width 1.0).
    """

    name = "mobilenet_v2"

    def __init__(self, *, width_mult: float = 1.0, num_classes: int = 1000,
                 low: float = 0.1, high: float = 1.0, step: float = 0.05,
                 round_to: int = 8) -> None:
        super().__init__(low=low, high=high, step=step, round_to=round_to)
        if width_mult <= 0:
            raise ValueError(f"`width_mult` must be positive, but got {width_mult=}.")
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, but got {num_classes=}.")
        self.width_mult, self.num_classes = width_mult, num_classes
        self._blocks = self._block_table()
        self._groups = self._group_table()

    def config(self) -> dict[str, Any]:
        return {"width_mult": self.width_mult, "num_classes": self.num_classes,
                "low": self.low, "high": self.high, "step": self.step,
                "round_to": self.round_to}

    def build_model(self) -> nn.Module:
        return mobilenet_v2(width_mult=self.width_mult, num_classes=self.num_classes)

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

    def layers(self, channels: Mapping[str, int], input_size: int) -> list[LayerShape]:
        c = dict(channels)
        hw = (input_size, input_size)
        stem = LayerShape("features.0.0", "conv", 3, c["stem"], hw, 3, 2, 1, batchnorm=True)
        out = [stem]
        hw, cin = stem.out_hw, c["stem"]
        for i, st, t, s, _res in self._blocks:
            cout = c[f"stage{st}"]
            if t == 1:
                hidden, pre = cin, f"features.{i}.conv"
            else:
                hidden, pre = c[f"block{i}"], f"features.{i}.conv"
                out.append(LayerShape(f"{pre}.0.0", "conv", cin, hidden, hw, batchnorm=True))
            dw_name = f"{pre}.0.0" if t == 1 else f"{pre}.1.0"
            dw = LayerShape(dw_name, "conv", hidden, hidden, hw, 3, s, 1, groups=hidden,
                            batchnorm=True)
            out.append(dw)
            hw = dw.out_hw
            out.append(LayerShape(self._project_name(i, t), "conv", hidden, cout, hw,
                                  batchnorm=True))
            cin = cout
        out.append(LayerShape("features.18.0", "conv", cin, c["last"], hw, batchnorm=True))
        out.append(LayerShape("classifier.1", "linear", c["last"], self.num_classes, bias=True))
        return out
