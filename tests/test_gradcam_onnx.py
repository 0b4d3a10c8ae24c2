"""Grad-CAM inside the ONNX graph matches the `grad-cam` package (torch autograd) on the same model.

For every registered zoo architecture, a torchvision backbone and EfficientNet-Lite0: explain.onnx
runs in onnxruntime on real images, and its cam is compared with `pytorch_grad_cam.GradCAM` on the
last stage, (a) at feature-map resolution and (b) resized to the input exactly as the package does.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from striate.errors import StriateError
from striate.manifest import Preprocessing
from training.export import export_model
from training.export.gradcam import HeadGradCAM, reference_cam
from training.export.images import real_batch
from training.export.onnx_export import EXPLAIN_FILE, export_onnx
from training.export.parity import session
from training.export.wrappers import CAM, IMAGE, LOGITS, TARGET, ExplainGraph, feature_shape
from training.models import ClassifierHead, create_model, list_models, model_entry

TOL = 1e-4
NUM_CLASSES = 5


def rgb_spec(size: int) -> Preprocessing:
    return Preprocessing(
        color_mode="RGB",
        resize_size=(size, size),
        crop_size=(size, size),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


def build(name: str, size: int, small: bool, **extra) -> nn.Module:
    """A registered model with random (seeded) weights; `small` shrinks the width where the builder can."""
    torch.manual_seed(0)
    kwargs = {"num_classes": NUM_CLASSES, "in_chans": 3, "input_size": size, **extra}
    if small and "base_width" in inspect.signature(model_entry(name).builder).parameters:
        kwargs["base_width"] = 8
    model = create_model(name, **kwargs).eval()
    if model_entry(name).family != "zoo":
        return model  # backbones keep their library's own init (or pretrained weights)
    # Zoo, random init: give BN trained-like statistics, so the maps are not just scaled copies of the init.
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def onnx_cams(model: nn.Module, images: np.ndarray, folder: Path, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Export explain.onnx for `model` to `folder` and run it; returns (logits, cam)."""
    input_shape = tuple(images.shape[1:])
    explain = ExplainGraph(model, feature_shape(model, input_shape))
    export_onnx(
        explain, (torch.zeros(2, *input_shape), torch.zeros(2, dtype=torch.long)), explain.io, folder / EXPLAIN_FILE
    )
    logits, cam = session(folder / EXPLAIN_FILE).run([LOGITS, CAM], {IMAGE: images, TARGET: targets})
    return logits, cam


def package_cam_at_input(model: nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    """The stock GradCAM, untouched: cam resized to the input size by the package."""
    layer = list(model.stages.values())[-1]
    cam = GradCAM(model, [layer])
    try:
        return cam(x, [ClassifierOutputTarget(t) for t in targets])
    finally:
        cam.activations_and_grads.release()


def resize_like_package(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What BaseCAM does after the channel sum: scale, cv2.resize to (W, H), scale again."""
    return scale_cam_image(scale_cam_image(cam, (size[1], size[0])))


def assert_cam_matches(model: nn.Module, size: int, tmp_path: Path, n: int = 5, predicted: bool = True) -> None:
    """One batch mixing "predicted class" (-1) and explicit targets, compared three ways.

    predicted=False uses explicit targets only: with a library's random init, logits are ~1e-9 and
    the argmax is float noise, so "the predicted class" is not a well-defined target.
    """
    images = real_batch(rgb_spec(size), n)
    x = torch.from_numpy(images)
    targets = np.array([-1, 0, 3, -1, 1, 4, 2][:n] if predicted else [0, 3, 1, 4, 2][:n], dtype=np.int64)
    logits, cam = onnx_cams(model, images, tmp_path, targets)
    with torch.no_grad():
        expected_logits = model(x).numpy()
    # 1e-4, relative once logits exceed 1 (random-init nets at 224 px reach several hundred).
    assert np.max(np.abs(logits - expected_logits)) <= TOL * max(1.0, np.abs(expected_logits).max())
    chosen = np.where(targets < 0, expected_logits.argmax(1), targets).tolist()
    ref = reference_cam(model, x, chosen)
    h, w = feature_shape(model, (3, size, size))[1:]
    assert cam.shape == ref.shape == (n, h, w)
    assert np.max(np.abs(cam - ref)) <= TOL
    full = package_cam_at_input(model, x, chosen)
    assert np.max(np.abs(resize_like_package(cam, (size, size)) - full)) <= TOL
    assert cam.min() >= 0 and cam.max() <= 1
    if h * w > 1:  # a 1x1 map scales to all zeros, in the package as here
        assert (cam.max(axis=(1, 2)) > 0.5).any(), "every cam is flat: the comparison would prove nothing"


@pytest.mark.parametrize("name", list_models(family="zoo"))
def test_cam_matches_grad_cam_package_zoo(name: str, tmp_path: Path) -> None:
    assert_cam_matches(build(name, 32, small=True), 32, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(family="zoo"))
def test_cam_matches_grad_cam_package_zoo_full_size(name: str, tmp_path: Path) -> None:
    assert_cam_matches(build(name, 224, small=False), 224, tmp_path, n=4)


def test_cam_matches_torchvision_backbone(tmp_path: Path) -> None:
    assert_cam_matches(build("tv_resnet18", 64, small=False), 64, tmp_path)


def test_cam_matches_efficientnet_lite0_imagenet_weights(tmp_path: Path) -> None:
    """The real network: ImageNet weights and its own 1000-class head."""
    model = build("efficientnet_lite0", 96, small=False, weights="imagenet", num_classes=1000)
    assert_cam_matches(model, 96, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tv_resnet18", "tv_resnet50", "tv_vgg16", "efficientnet_lite0"])
def test_cam_matches_backbones_224(name: str, tmp_path: Path) -> None:
    """Full size. Not the other torchvision nets with random init: their init makes logits ~1e-9,
    so their Grad-CAM is float noise in torch and onnxruntime alike (nothing to compare)."""
    extra = {"weights": "imagenet", "num_classes": 1000} if name == "efficientnet_lite0" else {}
    assert_cam_matches(build(name, 224, small=False, **extra), 224, tmp_path, n=2, predicted=bool(extra))


@pytest.mark.parametrize(
    "pre_logits",
    [
        nn.Sequential(nn.AdaptiveMaxPool2d(3), nn.Flatten(), nn.Linear(8 * 9, 12), nn.ReLU(inplace=True), nn.Dropout()),
        nn.Sequential(nn.AdaptiveAvgPool2d((3, 2)), nn.Flatten(), nn.Linear(8 * 6, 12), nn.Hardswish()),
        nn.Sequential(nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(1), nn.Identity()),
    ],
    ids=["max-pool-3x3-overlapping-bins", "avg-pool-3x2-hardswish", "relu-before-max-pool"],
)
def test_head_vjp_matches_autograd(pre_logits: nn.Sequential) -> None:
    """Each supported head op's hand-written backward equals torch autograd on a 5x5 map."""
    torch.manual_seed(0)
    fc = nn.Linear(pre_logits(torch.zeros(1, 8, 5, 5)).shape[1], 4)
    head = ClassifierHead(pre_logits, fc).eval()
    features = torch.randn(7, 8, 5, 5, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, -1, -1, 2])
    with torch.no_grad():
        logits, cam = HeadGradCAM(head, (8, 5, 5))(features.detach(), target)
    ref_logits = head(features)
    chosen = torch.where(target < 0, ref_logits.argmax(1), target)
    (grad,) = torch.autograd.grad(ref_logits.gather(1, chosen[:, None]).sum(), features)
    ref = torch.relu((grad.mean((2, 3), keepdim=True) * features).sum(1)).detach().numpy()

    torch.testing.assert_close(logits, ref_logits.detach(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(cam.numpy(), scale_cam_image(scale_cam_image(ref)), atol=1e-5, rtol=0)


def test_unsupported_head_is_refused_with_the_module_named(tmp_path: Path) -> None:
    model = build("resnet18", 32, small=True)
    model.head.pre_logits = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(64), nn.Tanh())
    with pytest.raises(StriateError, match=r"'head\.pre_logits\.2' \(BatchNorm1d\).*only AdaptiveAvgPool2d"):
        export_model(model, list("abcde"), rgb_spec(32), "refused", out_root=tmp_path)
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
