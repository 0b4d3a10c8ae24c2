"""Source models for the ONNX import tests: torchvision and timm classifiers (seeded random weights,
no downloads), exported with torch.onnx as a user would, plus an NHWC graph and small odd graphs.

Each source is exported once per session into a temporary folder (`onnx_file`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from striate.manifest import Preprocessing
from striate.normalization import IMAGENET_MEAN, IMAGENET_STD
from training.explain import reference
from training.export import images as real

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


class TensorFlowStyle(nn.Module):
    """A head as TensorFlow-made graphs have it: the map transposed back to NHWC, a ReduceMean over
    axes (1, 2), then MatMul + Add instead of Gemm; ReLU6 (Clip) in the body."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.ReLU6(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU6()
        )
        self.kernel = nn.Parameter(torch.randn(32, NUM_CLASSES) * 0.3)
        self.bias = nn.Parameter(torch.randn(NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).permute(0, 2, 3, 1).mean(dim=(1, 2)) @ self.kernel + self.bias


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


class FixedBatchFlat(nn.Module):
    """A one-image export that cannot be batched: its Linear reads the whole batch as one vector."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=8, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * (SIZE // 8) ** 2, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten()).unsqueeze(0)


@dataclass(frozen=True)
class Source:
    make: Callable[[], nn.Module]
    layer: Callable[[nn.Module], nn.Module]  # the module whose output the import explains
    nhwc: bool = False
    dynamo: bool = False  # exported by torch.onnx's default (dynamo) exporter, else the TorchScript one
    fixed_batch: bool = False  # exported for one image, without a dynamic batch axis
    same_as: str | None = None  # the torch model of that source, exported another way (built once)


def _tv(name: str) -> Callable[[], nn.Module]:
    import torchvision

    return lambda: getattr(torchvision.models, name)(num_classes=NUM_CLASSES)


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    import timm

    return lambda: timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)


SOURCES: dict[str, Source] = {
    "torchvision-resnet18": Source(_tv("resnet18"), lambda m: m.layer4),
    "torchvision-mobilenet_v3_small": Source(_tv("mobilenet_v3_small"), lambda m: m.features),
    "torchvision-efficientnet_b0": Source(_tv("efficientnet_b0"), lambda m: m.features),
    "timm-convnext_atto": Source(_timm("convnext_atto"), lambda m: m.stages),
    "timm-resnet18-nhwc": Source(_timm("resnet18"), lambda m: m.net.layer4, nhwc=True),
    "tensorflow-style-nhwc": Source(TensorFlowStyle, lambda m: m.net.conv, nhwc=True),
    "timm-test_resnet-catavgmax": Source(_timm("test_resnet", global_pool="catavgmax"), lambda m: m.layer4),
}


def _dynamo_exports(*names: str) -> dict[str, Source]:
    """The same torch models exported by torch.onnx.export's default (dynamo) exporter, with a
    dynamic batch and for one image."""
    exports = {}
    for name in names:
        exports[f"{name}-dynamo"] = replace(SOURCES[name], dynamo=True, same_as=name)
        exports[f"{name}-dynamo-batch1"] = replace(SOURCES[name], dynamo=True, fixed_batch=True, same_as=name)
    return exports


SOURCES.update(_dynamo_exports("torchvision-resnet18", "timm-convnext_atto"))


def _calibrate_batch_norms(model: nn.Module, nhwc: bool) -> None:
    """Set every BatchNorm's statistics from one pass over real images, as training would: at
    initialisation (mean 0, variance 1) some networks (mobilenet_v3) shrink their activations to
    ~1e-7, where XGrad-CAM's division by an activation sum is float32 noise."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        x = torch.from_numpy(real.real_batch(PREPROCESSING, 16))
        model(x.permute(0, 2, 3, 1) if nhwc else x)
    model.eval()


@functools.cache
def source_model(name: str) -> nn.Module:
    spec = SOURCES[name]
    if spec.same_as is not None:
        return source_model(spec.same_as)
    torch.manual_seed(0)
    model = NHWC(spec.make()) if spec.nhwc else spec.make()
    _calibrate_batch_norms(model, spec.nhwc)
    return model.eval()


def export(model: nn.Module, path: Path, example: torch.Tensor, dynamic: bool = True) -> Path:
    """The TorchScript exporter (dynamo=False) at opset 17."""
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


def export_dynamo(model: nn.Module, path: Path, example: torch.Tensor, dynamic: bool = True) -> Path:
    """torch.onnx.export as called without options (the dynamo exporter, its default opset)."""
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (example,), str(path), input_names=["input"], output_names=["output"], dynamic_shapes=shapes
        )
    return path


@functools.cache
def onnx_file(name: str) -> Path:
    """The source model `name` (a SOURCES key, "cumsum", "fixed-batch-softmax", "fixed-batch-flat" or
    "not-an-image") as an ONNX file."""
    if name == "cumsum":
        torch.manual_seed(0)
        return export(CumsumHead(), _DIR / "cumsum.onnx", torch.zeros(2, 3, SIZE, SIZE))
    if name == "fixed-batch-softmax":
        torch.manual_seed(0)
        return export(FixedBatchSoftmax(), _DIR / "fixed.onnx", torch.zeros(1, 3, SIZE, SIZE), dynamic=False)
    if name == "fixed-batch-flat":
        torch.manual_seed(0)
        return export(FixedBatchFlat(), _DIR / "flat.onnx", torch.zeros(1, 3, SIZE, SIZE), dynamic=False)
    if name == "not-an-image":
        return export(NotAnImageModel(), _DIR / "mlp.onnx", torch.zeros(2, 16))
    spec = SOURCES[name]
    batch = 1 if spec.fixed_batch else 2
    shape = (batch, SIZE, SIZE, 3) if spec.nhwc else (batch, 3, SIZE, SIZE)
    exporter = export_dynamo if spec.dynamo else export
    return exporter(source_model(name), _DIR / f"{name}.onnx", torch.zeros(shape), dynamic=not spec.fixed_batch)


def source_input(name: str, images: np.ndarray) -> torch.Tensor:
    """NCHW preprocessed images as the source model takes them."""
    x = torch.from_numpy(images)
    return x.permute(0, 2, 3, 1).contiguous() if SOURCES[name].nhwc else x


_CAMS: dict[tuple, np.ndarray] = {}


def package_cams(name: str, images: np.ndarray, method: str, targets: np.ndarray) -> np.ndarray:
    """[N, T, h, w]: pytorch-grad-cam's class for `method` on the source torch model, at map resolution
    (computed once for all the exports of one model)."""
    spec = SOURCES[name]
    key = (spec.same_as or name, images.shape, images.tobytes(), method, targets.shape, targets.tobytes())
    if key not in _CAMS:
        model = source_model(name)
        layer = spec.layer(model)
        _CAMS[key] = reference.package_cams(model, source_input(name, images), method, targets, layer)
    return _CAMS[key].copy()
