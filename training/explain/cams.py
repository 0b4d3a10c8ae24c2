"""The CAM base, as pytorch-grad-cam's `base_cam.py`: activations and gradients -> weights ->
weighted channel sum -> ReLU -> scale. A gradient method overrides one thing, its weights.

A weights function takes A [..., C, h, w] (the target layer's activations) and G [..., C, h, w]
(d logit_target / d A) and returns per-channel weights [..., C, 1, 1] or, for HiResCAM and
LayerCAM, per-position weights [..., C, h, w]. The same function serves the exported graph (on the
head's hand-written gradients, see head.py) and the torch reference (on autograd's gradients).
Constants are pytorch-grad-cam's, so each method matches the class of the same name there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from striate.errors import StriateError
from striate.explain.methods import GRADIENT_METHODS

WeightsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SCALE_EPS = 1e-7  # the epsilon pytorch_grad_cam.utils.image.scale_cam_image adds to the max
SPATIAL = (-2, -1)
CAM_DTYPE = torch.float64  # the precision of every map's own arithmetic (see `cam`)

WEIGHTS: dict[str, WeightsFn] = {}


def register(name: str) -> Callable[[WeightsFn], WeightsFn]:
    """Register a gradient method's weights function under its name in striate.explain.methods."""

    def wrap(fn: WeightsFn) -> WeightsFn:
        if name not in GRADIENT_METHODS:
            raise ValueError(f"{name!r} is not a gradient method of striate.explain.methods")
        if name in WEIGHTS:
            raise ValueError(f"gradient method {name!r} is registered twice")
        WEIGHTS[name] = fn
        return fn

    return wrap


@register("gradcam")
def gradcam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Selvaraju et al.: the spatial mean of the gradient."""
    return g.mean(dim=SPATIAL, keepdim=True)


@register("gradcampp")
def gradcampp_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Chattopadhyay et al. (the closed form for an exponential score, as pytorch-grad-cam writes it)."""
    g2 = g * g
    g3 = g2 * g
    sum_a = a.sum(dim=SPATIAL, keepdim=True)
    aij = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    aij = torch.where(g != 0, aij, torch.zeros_like(aij))
    return (F.relu(g) * aij).sum(dim=SPATIAL, keepdim=True)


@register("xgradcam")
def xgradcam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Fu et al.: the gradient weighted by the normalised activation."""
    sum_a = a.sum(dim=SPATIAL, keepdim=True)
    return (g * a / (sum_a + 1e-7)).sum(dim=SPATIAL, keepdim=True)


@register("hirescam")
def hirescam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Draelos & Carin: the gradient itself, position by position (no averaging)."""
    return g


@register("layercam")
def layercam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Jiang et al.: the positive part of the gradient, position by position."""
    return F.relu(g)


def scale_cam(cam: torch.Tensor) -> torch.Tensor:
    """Min-max scaling of [..., h, w] maps, as `pytorch_grad_cam.utils.image.scale_cam_image`."""
    cam = cam - cam.amin(dim=SPATIAL, keepdim=True)
    return cam / (SCALE_EPS + cam.amax(dim=SPATIAL, keepdim=True))


def cam(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """[..., h, w] map of `method` in [0, 1] from activations and gradients [..., C, h, w], in a's dtype.

    Weights, channel sum, ReLU and scaling run in float64 (`CAM_DTYPE`) whatever a and g hold: a
    map whose terms nearly cancel (XGrad-CAM divides by a channel's activation sum, ~0 after
    Hardswish) then carries only the rounding of a and g themselves, never that of its own
    arithmetic, so it lands no farther from a float64 model than pytorch-grad-cam's float32 sum.
    pytorch-grad-cam scales once per target layer, then once more after merging the layers; the
    second pass matters when the map's maximum is small (it moves values by ~1e-7 / max).
    """
    fn = WEIGHTS.get(method)
    if fn is None:
        raise StriateError(f"no gradient method {method!r}; gradient methods: {', '.join(WEIGHTS)}")
    out_dtype = a.dtype
    a, g = a.to(CAM_DTYPE), g.to(CAM_DTYPE)
    raw = (fn(a, g) * a).sum(dim=-3)
    return scale_cam(scale_cam(F.relu(raw))).to(out_dtype)
