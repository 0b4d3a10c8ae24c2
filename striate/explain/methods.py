"""The registry of explanation methods: each one's URL-safe name, title and kind, stated once.

- "gradient" methods are computed by the bundle's explain graph (onnxruntime), from the target
  layer's activations and the gradient of each target's logit, in one run for every target;
- "forward" methods need forward passes of the model graph only, so they work on every bundle
  (Score-CAM and Eigen-CAM need the target layer's map, which bundles export).

The torch side (training/explain) registers one weights function per gradient method under these
names; the service (service/explain.py) one numpy function per forward method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["gradient", "forward"]


@dataclass(frozen=True)
class MethodInfo:
    name: str  # URL-safe lowercase identifier
    title: str
    kind: Kind
    needs_map: bool  # needs the target layer's feature map
    package_class: str | None  # the pytorch-grad-cam class it is checked against, if any
    per_class: bool = True  # False: one map whatever class is asked (Eigen-CAM: the maps' first component)
    summary: str = ""  # how it makes its map, in one sentence (the web page shows it)


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo(
            "gradcam",
            "Grad-CAM",
            "gradient",
            True,
            "GradCAM",
            summary="Each feature map of the layer, weighted by the class score's average gradient over it.",
        ),
        MethodInfo(
            "gradcampp",
            "Grad-CAM++",
            "gradient",
            True,
            "GradCAMPlusPlus",
            summary="Grad-CAM with each map weighted by its positive gradients only (higher-order terms): "
            "better when the class appears several times.",
        ),
        MethodInfo(
            "xgradcam",
            "XGrad-CAM",
            "gradient",
            True,
            "XGradCAM",
            summary="Grad-CAM with gradients weighted by the normalised activations, so the weights explain "
            "the score's change in proportion.",
        ),
        MethodInfo(
            "hirescam",
            "HiResCAM",
            "gradient",
            True,
            "HiResCAM",
            summary="Gradient times activation at each location, summed over the maps: shows what the "
            "model computed, not an average of it.",
        ),
        MethodInfo(
            "layercam",
            "LayerCAM",
            "gradient",
            True,
            "LayerCAM",
            summary="Each location weighted by its own positive gradient: finer maps, also at early layers.",
        ),
        MethodInfo(
            "eigencam",
            "Eigen-CAM",
            "forward",
            True,
            "EigenCAM",
            per_class=False,
            summary="The first principal component of the layer's activations: no gradients and no class.",
        ),
        MethodInfo(
            "scorecam",
            "Score-CAM",
            "forward",
            True,
            "ScoreCAM",
            summary="The image masked by each upsampled feature map, each map weighted by the class score "
            "its mask keeps: no gradients, one forward pass per map.",
        ),
        MethodInfo(
            "occlusion",
            "Occlusion",
            "forward",
            False,
            None,
            summary="A grey patch slid over the image: warm where covering it lowers the class score most.",
        ),
        MethodInfo(
            "rise",
            "RISE",
            "forward",
            False,
            None,
            summary="Random masks over the image: each pixel weighted by the class scores of the masks that keep it.",
        ),
    )
}
ALIASES = {"gradcam++": "gradcampp", "grad-cam": "gradcam", "grad-cam++": "gradcampp", "score-cam": "scorecam"}
DEFAULT_METHOD = "gradcam"
GRADIENT_METHODS = tuple(name for name, m in METHODS.items() if m.kind == "gradient")
FORWARD_METHODS = tuple(name for name, m in METHODS.items() if m.kind == "forward")


def canonical(name: str) -> str | None:
    """The registered name for `name` (case-insensitive, with the usual spellings), or None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in METHODS else None


def cam_output_name(method: str) -> str:
    """The explain graph's output holding `method`'s maps [N, T, h, w]."""
    return f"cam_{method}"
