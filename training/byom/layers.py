"""Finding the layers to export in any module: the target layer (default: the last conv stage) and stages.

A forward pass on a dummy input with a hook on every named module records, in the order modules
finish, what each returns. The default target is the last conv stage: of the modules finishing at
or after the last Conv2d, the last whose output is a map of that conv's resolution, skipping
pooling layers (a global pool's [N, C, 1, 1] is not a map) and modules called more than once (a
shared ReLU has no single output to explain). Containers finish after their children, so
resnet's `layer4` wins over `layer4.1.conv2`, and EfficientNet's `bn2` (norm + activation after
the head conv) over `conv_head`; a ViT's attention tensors are not maps of the patch conv.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from striate.errors import StriateError

POOLING = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.LPPool2d,
)


@dataclass(frozen=True)
class LayerCall:
    path: str  # the module's dotted path in the model ("" is the model itself)
    shape: tuple[int, ...]  # what it returned, batch axis included
    calls: int  # how often it ran in one forward pass


def _is_pooling(module: nn.Module) -> bool:
    # timm's SelectAdaptivePool2d wraps an adaptive pool; matching by name keeps timm optional here.
    return isinstance(module, POOLING) or type(module).__name__ == "SelectAdaptivePool2d"


def trace_calls(model: nn.Module, example: torch.Tensor) -> tuple[torch.Tensor, list[LayerCall]]:
    """The model's output on `example` and every named module's (last) output shape, in finishing order."""
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    counts: dict[str, int] = {}

    def hook_for(path: str):
        def hook(module: nn.Module, args, output) -> None:
            counts[path] = counts.get(path, 0) + 1
            if path in shapes:
                order.remove(path)
            order.append(path)
            shapes[path] = tuple(output.shape) if isinstance(output, torch.Tensor) else ()

        return hook

    handles = [m.register_forward_hook(hook_for(p)) for p, m in model.named_modules() if p]
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        for h in handles:
            h.remove()
    return output, [LayerCall(p, shapes[p], counts[p]) for p in order]


def last_conv_stage(model: nn.Module, calls: list[LayerCall]) -> str | None:
    """The default target layer (None if the model has no conv): see the module's docstring."""
    convs = [i for i, c in enumerate(calls) if isinstance(model.get_submodule(c.path), nn.Conv2d)]
    if not convs or len(calls[convs[-1]].shape) != 4:
        return None
    last = convs[-1]
    batch, _, h, w = calls[last].shape
    for call in reversed(calls[last:]):
        if (
            len(call.shape) == 4
            and (call.shape[0], *call.shape[2:]) == (batch, h, w)
            and call.calls == 1
            and not _is_pooling(model.get_submodule(call.path))
        ):
            return call.path
    return None


def check_layer(model: nn.Module, path: str, calls: list[LayerCall], what: str) -> LayerCall:
    """The recorded call of module `path`, or a StriateError naming close paths / why it cannot serve."""
    by_path = {c.path: c for c in calls}
    if path not in by_path:
        known = [p for p, _ in model.named_modules() if p]
        close = difflib.get_close_matches(path, known, n=3)
        if path in known:
            raise StriateError(f"{what} {path!r} does not run in the model's forward pass")
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise StriateError(f"{what} {path!r} is not a module of {type(model).__name__}{hint}")
    call = by_path[path]
    if len(call.shape) != 4:
        raise StriateError(f"{what} {path!r} returns {_shape(call.shape)}, not a [N, C, h, w] feature map")
    if call.calls != 1:
        raise StriateError(f"{what} {path!r} runs {call.calls} times in one forward pass; name a module that runs once")
    return call


def _shape(shape: tuple[int, ...]) -> str:
    return f"[{', '.join(map(str, shape))}]" if shape else "no tensor"
