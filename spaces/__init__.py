"""Search spaces: which channels of a network may be pruned, and what a policy costs in shapes."""

from ._base import ChannelGroup, LayerShape, Policy, SearchSpace, keep_channels
from ._registry import get_space, list_spaces, register_space
from ._trace import (Coupling, Layer, Network, UnsupportedNetwork, counted_cost, out_pruner,
                     out_width)
from ._torchvision import (MobileNetV3LargeSpace, ResNet18Space, ResNet50Space,
                           TorchvisionSpace)
from ._mobilenet_v2 import MobileNetV2Space
from ._custom import (FileSpace, ModelFileError, ModuleSpace, architecture_sha256, replace_head,
                      timm_space)

__all__ = ["architecture_sha256", "ChannelGroup", "Coupling", "FileSpace", "Layer", "LayerShape", "MobileNetV2Space",
           "MobileNetV3LargeSpace", "ModelFileError", "ModuleSpace", "Network", "Policy", "ResNet18Space",
           "ResNet50Space", "SearchSpace", "TorchvisionSpace", "UnsupportedNetwork",
           "counted_cost", "get_space", "keep_channels", "list_spaces", "out_pruner",
           "out_width", "register_space", "replace_head", "timm_space"]
