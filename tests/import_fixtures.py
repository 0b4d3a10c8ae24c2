"""Source models for the ONNX import tests: torchvision and timm classifiers (seeded random weights,
no downloads), exported with torch.onnx as a user would, plus an NHWC graph and small odd graphs.

Each source is exported once per session into a temporary folder (`onnx_file`).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from striate.explain.methods import METHODS
from striate.manifest import Preprocessing
from striate.normalization import IMAGENET_MEAN, IMAGENET_STD

SIZE = 64  # small inputs keep the suite fast; every source model still ends in a 2x2 map
NUM_CLASSES = 10
LABELS = [f"class_{i}" for i in range(NUM_CLASSES)]
PREPROCESSING = Preprocessing(
    color_mode="RGB", resize_size=(SIZE, SIZE), crop_size=(SIZE, SIZE), mean=IMAGENET_MEAN, std=IMAGENET_STD
)
_DIR = Path(tempfile.mkdtemp(prefix="striate-import-sources-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)


class NHWC(nn.Module):
    """A classifier taking NHWC images (as TensorFlow-made graphs do): a Transpose, then the network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


class CumsumHead(nn.Module):
    """A tiny CNN whose head uses an op without a backward rule (CumSum)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cumsum(self.body(x).mean(dim=(2, 3)), dim=1))


class FixedBatchSoftmax(nn.Module):
    """A tiny CNN as a one-image export writes it: batch fixed to 1, a `view(1, -1)` reshape, and
    probabilities (a final softmax) as its output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return torch.softmax(self.fc(f.mean(dim=(2, 3), keepdim=True).view(f.size(0), -1)), dim=1)


class NotAnImageModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@dataclass(frozen=True)
class Source:
    make: Callable[[], nn.Module]
    layer: Callable[[nn.Module], nn.Module]  # the module whose output the import explains
    nhwc: bool = False


def _tv(name: str) -> Callable[[], nn.Module]:
    import torchvision

    return lambda: getattr(torchvision.models, name)(num_classes=NUM_CLASSES)


def _timm(name: str) -> Callable[[], nn.Module]:
    import timm

    return lambda: timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)


SOURCES: dict[str, Source] = {
    "torchvision-resnet18": Source(_tv("resnet18"), lambda m: m.layer4),
    "torchvision-mobilenet_v3_small": Source(_tv("mobilenet_v3_small"), lambda m: m.features),
    "torchvision-efficientnet_b0": Source(_tv("efficientnet_b0"), lambda m: m.features),
    "timm-convnext_atto": Source(_timm("convnext_atto"), lambda m: m.stages),
    "timm-resnet18-nhwc": Source(_timm("resnet18"), lambda m: m.net.layer4, nhwc=True),
}


@functools.cache
def source_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    spec = SOURCES[name]
    model = spec.make()
    return (NHWC(model) if spec.nhwc else model).eval()


def export(model: nn.Module, path: Path, example: torch.Tensor, dynamic: bool = True) -> Path:
    with torch.no_grad():
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None,
        )
    return path


@functools.cache
def onnx_file(name: str) -> Path:
    """The source model `name` (a SOURCES key, "cumsum", "fixed-batch-softmax" or "not-an-image") as an ONNX file."""
    if name == "cumsum":
        torch.manual_seed(0)
        return export(CumsumHead(), _DIR / "cumsum.onnx", torch.zeros(2, 3, SIZE, SIZE))
    if name == "fixed-batch-softmax":
        torch.manual_seed(0)
        return export(FixedBatchSoftmax(), _DIR / "fixed.onnx", torch.zeros(1, 3, SIZE, SIZE), dynamic=False)
    if name == "not-an-image":
        return export(NotAnImageModel(), _DIR / "mlp.onnx", torch.zeros(2, 16))
    shape = (2, SIZE, SIZE, 3) if SOURCES[name].nhwc else (2, 3, SIZE, SIZE)
    return export(source_model(name), _DIR / f"{name}.onnx", torch.zeros(shape))


def source_input(name: str, images: np.ndarray) -> torch.Tensor:
    """NCHW preprocessed images as the source model takes them."""
    x = torch.from_numpy(images)
    return x.permute(0, 2, 3, 1).contiguous() if SOURCES[name].nhwc else x


def package_cams(name: str, images: np.ndarray, method: str, targets: np.ndarray) -> np.ndarray:
    """[N, T, h, w]: pytorch-grad-cam's class for `method` on the source torch model, at map resolution."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = source_model(name)
    layer = SOURCES[name].layer(model)
    x = source_input(name, images)
    maps: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda module, args, out: maps.append(out))
    with torch.no_grad():
        model(x[:1])
    hook.remove()
    fh, fw = maps[0].shape[-2:]

    class FeatureResolution(getattr(pytorch_grad_cam, METHODS[method].package_class)):
        def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
            return int(fw), int(fh)

    explainer = FeatureResolution(model, [layer])
    try:
        columns = [
            explainer(x, [ClassifierOutputTarget(int(t)) for t in targets[:, j]]) for j in range(targets.shape[1])
        ]
    finally:
        explainer.activations_and_grads.release()
    return np.stack(columns, axis=1)
