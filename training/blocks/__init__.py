"""CNN building blocks: small `nn.Module`s that know nothing about the architectures using them.

Norm and activation are passed in as factories (`norm_layer(num_features)`, `act_layer()`), timm
style; `norm_layer=None` / `act_layer=None` leave them out.
"""

from .conv import ConvNormAct, DepthwiseSeparableConv, LayerFn
from .inception import InceptionModule
from .pool import GLOBAL_POOLS, create_pool2d, global_pool
from .residual import BasicBlock, Bottleneck, projection_shortcut
from .squeeze_excite import SqueezeExcite

__all__ = [
    "GLOBAL_POOLS",
    "BasicBlock",
    "Bottleneck",
    "ConvNormAct",
    "DepthwiseSeparableConv",
    "InceptionModule",
    "LayerFn",
    "SqueezeExcite",
    "create_pool2d",
    "global_pool",
    "projection_shortcut",
]
