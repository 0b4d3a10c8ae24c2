"""export_classifier: any PyTorch image classifier in, a checked bundle version out.

The module is traced once with torch.onnx, unchanged, with the target layer's map (and any
requested stages' maps) as extra named outputs; the importer (training.importer) then writes the
bundle and, where it can differentiate the part of the graph after the target layer, the explain
graph. Before the bundle lands, `check.check_bundle` holds both graphs to the module itself and to
pytorch-grad-cam on it; a miss refuses the bundle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from striate.errors import StriateError
from striate.manifest import Preprocessing
from training.export import images as real
from training.export.api import NAME_PATTERN, PARITY_IMAGES
from training.export.onnx_export import EXAMPLE_BATCH
from training.export.wrappers import LOGITS
from training.importer.api import CheckResult, import_onnx

from .check import check_bundle
from .graph import export_maps_graph, map_output_name
from .layers import LayerCall, check_layer, last_conv_stage, trace_calls


def _describe(output: object) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape [{', '.join(map(str, output.shape))}]"
    return f"a {type(output).__name__}"


def inspect_classifier(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, list[LayerCall]]:
    """(number of classes, module calls) of `model`; refuses, in one line, anything but [N, K] scores."""
    kind = type(model).__name__
    example = torch.zeros(EXAMPLE_BATCH, *input_shape)
    try:
        output, calls = trace_calls(model, example)
    except Exception as exc:  # the user's forward: any error means it cannot take this input
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise StriateError(
            f"{kind} cannot run on a [N, {', '.join(map(str, input_shape))}] image batch: {first}"
        ) from None
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != EXAMPLE_BATCH:
        raise StriateError(
            f"{kind} is not an image classifier: it returns {_describe(output)} for a batch of "
            f"{EXAMPLE_BATCH} images, not [N, K] class scores"
        )
    if not output.is_floating_point():
        raise StriateError(f"{kind} is not an image classifier: its output is {output.dtype}, not float scores")
    if output.shape[1] > 1 and bool((output >= 0).all()) and torch.allclose(output.sum(1), torch.ones(1), atol=1e-5):
        raise StriateError(
            f"{kind} returns probabilities (each row sums to 1): export it without its final softmax; "
            "bundles serve and explain the scores before it"
        )
    return int(output.shape[1]), calls


def export_classifier(
    module: nn.Module,
    labels: Sequence[str],
    preprocessing: Preprocessing,
    name: str,
    version: int | None = None,
    out_root: str | os.PathLike = "exported",
    *,
    target_layer: str | None = None,
    stages: Sequence[str] = (),
    architecture: str | None = None,
    origin: str = "",
    metrics: Mapping[str, float] | None = None,
    data: str = "",
    require_gradients: bool = False,
) -> Path:
    """Export any classifier `module` ([N, C, H, W] -> [N, K] logits) to `<out_root>/<name>/<version>/`.

    `target_layer` is the module path Grad-CAM and the other CAMs explain (default: the last conv
    stage, see layers.py); `stages` are module paths whose maps are exported as feature layers.
    A head the importer cannot differentiate exports with gradient-free methods only, unless
    `require_gradients`. Every map and CAM is checked against the module before the bundle lands.
    """
    if not NAME_PATTERN.match(name):
        raise StriateError(f"bad model name {name!r}: use lower-case letters, digits, '_', '.', '-'")
    model = module.eval()
    input_shape = (preprocessing.channels, *preprocessing.crop_size)
    classes, calls = inspect_classifier(model, input_shape)
    if classes != len(labels):
        raise StriateError(f"{len(labels)} labels for a model with {classes} classes")
    if target_layer is not None:
        target: str | None = check_layer(model, target_layer, calls, "target layer").path
    else:
        target = last_conv_stage(model, calls)
        if target is None and require_gradients:
            raise StriateError(f"{type(model).__name__} has no 4-D feature map to explain; name --target-layer")
    stage_paths = tuple(check_layer(model, s, calls, "stage").path for s in stages)
    paths = tuple(dict.fromkeys(([target] if target else []) + list(stage_paths)))
    proto = export_maps_graph(model, paths, input_shape)
    images = real.real_batch(preprocessing, PARITY_IMAGES)

    def check(folder: Path) -> CheckResult:
        parity, method_parity = check_bundle(folder, model, target, stage_paths, images)
        return CheckResult(parity=parity, method_parity=method_parity)

    return import_onnx(
        proto,
        labels,
        preprocessing,
        name,
        version,
        out_root,
        target_tensor=map_output_name(target) if target else None,
        feature_tensors=[map_output_name(p) for p in stage_paths],
        logits_output=LOGITS,
        architecture=architecture or type(model).__name__,
        origin=origin or f"python:{type(model).__module__}.{type(model).__qualname__}",
        metrics=metrics,
        data=data,
        check=check,
        require_gradients=require_gradients,
    )
