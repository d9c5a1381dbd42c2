"""Search spaces: which channels of a network may be pruned, and what a policy costs in shapes."""

from ._base import ChannelGroup, LayerShape, Policy, SearchSpace, keep_channels
from ._registry import get_space, list_spaces, register_space
from ._mobilenet_v2 import MobileNetV2Space

__all__ = ["ChannelGroup", "LayerShape", "MobileNetV2Space", "Policy", "SearchSpace",
           "get_space", "keep_channels", "list_spaces", "register_space"]
