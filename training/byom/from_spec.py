"""`striate export SPEC`: build the model of a spec, load its weights, find labels and preprocessing.

Each comes from the most specific source given: a labels file, else the weights' metadata
(a torchvision enum's categories, timm's ImageNet names); preprocessing flags over the weights'
own transform (torchvision `transforms()`, timm's pretrained_cfg). What was used is reported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from striate.errors import StriateError
from striate.manifest import Preprocessing
from training.checkpoint import file_sha256

from . import sources
from .export import export_classifier, inspect_classifier
from .specs import ModelSpec, build_model, parse_model_spec
from .weights import cached_enum_file, load_weights, torchvision_enum


@dataclass(frozen=True)
class Overrides:
    """Preprocessing fields given as flags (None: from the weights' metadata)."""

    size: Sequence[int] | None = None
    resize: Sequence[int] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    interpolation: str | None = None
    color_mode: str | None = None


@dataclass(frozen=True)
class Prepared:
    model: nn.Module
    labels: list[str]
    preprocessing: Preprocessing
    spec: ModelSpec
    weights: str  # where the tensors came from
    labels_from: str
    preprocessing_from: str


def is_enum_name(text: str) -> bool:
    """ "ResNet18_Weights.IMAGENET1K_V1", "IMAGENET1K_V1" or "DEFAULT", and no such file."""
    return not Path(text).exists() and re.fullmatch(r"(\w+_Weights\.)?([A-Z0-9_]+)", text) is not None


def _default_enum(spec: ModelSpec) -> Any | None:
    """torchvision's DEFAULT weights of the model (metadata only), if it has any."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(spec.name).DEFAULT
    except (KeyError, ValueError, AttributeError):
        return None


def prepare(
    text: str,
    *,
    kwargs: Mapping[str, Any] | None = None,
    weights: str | os.PathLike | None = None,
    pretrained: str | None = None,
    random_init: bool = False,
    labels_file: str | os.PathLike | None = None,
    overrides: Overrides = Overrides(),
) -> Prepared:
    spec = parse_model_spec(text, kwargs)
    if weights is not None and not pretrained and spec.source == "torchvision" and is_enum_name(str(weights)):
        weights, pretrained = None, str(weights)  # `--weights ResNet18_Weights.IMAGENET1K_V1`: the enum's file
    if pretrained and spec.source != "torchvision":
        raise StriateError("--pretrained names torchvision weights (e.g. ResNet18_Weights.IMAGENET1K_V1)")
    if random_init and (weights or pretrained):
        raise StriateError("--random-init exports the builder's random weights; do not combine it with weights")
    enum = torchvision_enum(spec.name, pretrained) if pretrained else None
    model = build_model(spec)
    if weights is not None or enum is not None:
        path = Path(weights) if weights is not None else cached_enum_file(enum)
        load_weights(model, path, spec.origin)
        weights_from = f"{path.as_posix()} (sha256 {file_sha256(path)})"
    elif spec.source == "python" or random_init:
        weights_from = "the factory's own" if spec.source == "python" else "random initialisation"
    else:
        raise StriateError(
            f"no weights for {spec.origin}: pass --weights FILE (a state dict), --pretrained ENUM with its file "
            "in the torch hub cache, or --random-init"
        )

    meta = enum if enum is not None else (_default_enum(spec) if spec.source == "torchvision" else None)
    meta_name = f"{type(meta).__name__}.{meta.name}" if meta is not None else ""
    if meta is not None:
        base, pre_from = sources.enum_preprocessing(meta), f"{meta_name}.transforms()"
    elif spec.source == "timm":
        base, pre_from = sources.timm_preprocessing(model), "timm pretrained_cfg"
    else:
        base, pre_from = None, "flags"
    preprocessing = sources.with_overrides(base, **vars(overrides))
    if any(v is not None for v in vars(overrides).values()) and base is not None:
        pre_from += " and flags"

    classes, _ = inspect_classifier(model, (preprocessing.channels, *preprocessing.crop_size))
    if labels_file is not None:
        labels, labels_from = sources.read_labels(labels_file), Path(labels_file).as_posix()
    else:
        labels, labels_from = _metadata_labels(spec, model, meta, meta_name, classes)
    return Prepared(model, labels, preprocessing, spec, weights_from, labels_from, pre_from)


def _metadata_labels(
    spec: ModelSpec, model: nn.Module, meta: Any, meta_name: str, classes: int
) -> tuple[list[str], str]:
    if meta is not None and len(meta.meta["categories"]) == classes:
        return sources.enum_labels(meta), f'{meta_name}.meta["categories"]'
    if spec.source == "timm":
        names = sources.timm_labels(model)
        if names is not None and len(names) == classes:
            return names, "timm ImageNet class names"
    raise StriateError(f"{spec.origin} has {classes} classes and no class names in its metadata: give --labels FILE")


def export_spec(
    prepared: Prepared, name: str, version: int | None = None, out_root: str | os.PathLike = "exported", **kw
) -> Path:
    """Export a prepared spec (keywords as `export_classifier`)."""
    return export_classifier(
        prepared.model,
        prepared.labels,
        prepared.preprocessing,
        name,
        version,
        out_root,
        architecture=prepared.spec.name,
        origin=prepared.spec.origin,
        data=f"weights: {prepared.weights}",
        **kw,
    )
