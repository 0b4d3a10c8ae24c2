"""Every gradient CAM method inside the ONNX graph matches pytorch-grad-cam on the same model.

For every registered zoo architecture, a torchvision backbone and EfficientNet-Lite0: explain.onnx
runs in onnxruntime on real images with several targets per image, and each method's maps are
compared with pytorch-grad-cam's class of the same name on the last stage, (a) at feature-map
resolution and (b) for Grad-CAM, resized to the input exactly as the package does. Inputs are sized
so that every last map is at least 2x2: a 1x1 map scales to all zeros and would prove nothing.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from striate.errors import StriateError
from striate.explain.methods import GRADIENT_METHODS, METHODS
from striate.manifest import Manifest, MethodParity, Preprocessing
from training.explain.cams import WEIGHTS, cam
from training.explain.head import SUPPORTED_HEAD_LAYERS, HeadVJP
from training.explain.reference import TorchCAM, float64_cams, package_cams, package_float64_diff
from training.export import export_model
from training.export.images import real_batch
from training.export.onnx_export import EXPLAIN_FILE, export_onnx
from training.export.parity import TOLERANCE, check_explain_parity, session
from training.export.wrappers import CAM_OUTPUTS, EXPLAINED, IMAGE, LOGITS, TARGETS, ExplainGraph, feature_shape
from training.models import ClassifierHead, create_model, list_models, model_entry

NUM_CLASSES = 5
SMALL_SIZES = (32, 36, 40, 48, 64)


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
        if "weights" not in extra:  # a library's random init: logits ~1e-9, maps all float noise;
            with torch.no_grad():  # scale fc so that W @ embedding is ~1 (the maps' shapes do not change)
                embedding = model.forward_head(model.forward_features(torch.randn(2, 3, size, size)), pre_logits=True)
                model.head.fc.weight /= float((embedding @ model.head.fc.weight.T).std()) or 1.0
        return model  # backbones keep their library's own init (or pretrained weights)
    # Zoo, random init: give BN trained-like statistics, so the maps are not just scaled copies of the init.
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def small_size(name: str) -> int:
    """The smallest test input whose last feature map is at least 2x2."""
    for size in SMALL_SIZES:
        if min(feature_shape(build(name, size, small=True), (3, size, size))[1:]) >= 2:
            return size
    raise AssertionError(f"{name}: no test size gives a last map of at least 2x2")


def onnx_explain(model: nn.Module, images: np.ndarray, folder: Path, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Export explain.onnx for `model` to `folder` and run it on `images` and `targets` [N, T]."""
    input_shape = tuple(images.shape[1:])
    explain = ExplainGraph(model, feature_shape(model, input_shape))
    example = (torch.zeros(2, *input_shape), torch.zeros(2, 2, dtype=torch.long))
    export_onnx(explain, example, explain.io, folder / EXPLAIN_FILE)
    sess = session(folder / EXPLAIN_FILE)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {IMAGE: images, TARGETS: targets}), strict=True))


def package_cam_at_input(model: nn.Module, x: torch.Tensor, targets: list[int]) -> np.ndarray:
    """The stock GradCAM, untouched: cam resized to the input size by the package."""
    layer = list(model.stages.values())[-1]
    explainer = GradCAM(model, [layer])
    try:
        return explainer(x, [ClassifierOutputTarget(t) for t in targets])
    finally:
        explainer.activations_and_grads.release()


def assert_not_flat(maps: np.ndarray, what: str) -> None:
    assert maps.shape[-1] * maps.shape[-2] > 1, f"{what}: a 1x1 map is flat by construction"
    assert (maps.max(axis=(-2, -1)) > 0.5).any(), f"{what}: every map is flat, the comparison would prove nothing"


def assert_methods_match(model: nn.Module, size: int, tmp_path: Path, n: int = 4, predicted: bool = True) -> None:
    """One batch, three targets per image (the predicted class or an explicit one, the runner-up,
    an explicit class), every gradient method compared with pytorch-grad-cam.

    predicted=False uses explicit targets only: with a library's random init, logits are ~1e-9 and
    the ranking is float noise, so "the predicted class" is not a well-defined target.
    """
    images = real_batch(rgb_spec(size), n)
    x = torch.from_numpy(images)
    first = [-1, 0, 3, -1, 1][:n] if predicted else [0, 3, 1, 4, 2][:n]
    second = [-2] * n if predicted else [1, 1, 2, 0, 3][:n]
    targets = np.array([first, second, [4, 2, 0, 1, 3][:n]], dtype=np.int64).T
    out = onnx_explain(model, images, tmp_path, targets)
    with torch.no_grad():
        expected_logits = model(x).numpy()
    # 1e-4, relative once logits exceed 1 (random-init nets at 224 px reach several hundred).
    assert np.max(np.abs(out[LOGITS] - expected_logits)) <= TOLERANCE * max(1.0, np.abs(expected_logits).max())
    chosen = out[EXPLAINED]
    order = np.argsort(-expected_logits, axis=1)
    assert np.array_equal(chosen[:, 2], targets[:, 2])
    if predicted:
        assert np.array_equal(chosen[targets[:, 0] == -1, 0], order[targets[:, 0] == -1, 0])
        assert np.array_equal(chosen[:, 1], order[:, 1])
    h, w = feature_shape(model, (3, size, size))[1:]
    reference64 = None
    for method, output in CAM_OUTPUTS.items():
        maps = out[output]
        assert maps.shape == (n, 3, h, w)
        assert maps.min() >= 0 and maps.max() <= 1
        assert_not_flat(maps, f"{method} (onnxruntime)")
        package = package_cams(model, x, method, chosen)
        diff = np.max(np.abs(maps - package))
        parity = MethodParity(method=method, max_abs_diff=diff, tolerance=TOLERANCE)
        if diff > TOLERANCE:  # float32 rounding: no farther from float64 than pytorch-grad-cam is
            reference64 = reference64 or float64_cams(model, images, chosen, list(CAM_OUTPUTS))
            ours = float(np.max(np.abs(maps - reference64[method])))
            theirs = package_float64_diff(model, images, method, chosen, reference64[method])
            parity = parity.model_copy(update={"float64_diff": ours, "package_float64_diff": theirs})
        assert parity.passed, parity
    full = package_cam_at_input(model, x, chosen[:, 0].tolist())
    resized = scale_cam_image(scale_cam_image(out[CAM_OUTPUTS["gradcam"]][:, 0], (size, size)))
    assert np.max(np.abs(resized - full)) <= TOLERANCE


def test_every_gradient_method_is_registered_on_both_sides() -> None:
    assert set(WEIGHTS) == set(GRADIENT_METHODS) == set(CAM_OUTPUTS)
    assert all(METHODS[m].package_class for m in GRADIENT_METHODS)


@pytest.mark.parametrize("name", list_models(family="zoo"))
def test_methods_match_grad_cam_package_zoo(name: str, tmp_path: Path) -> None:
    size = small_size(name)
    assert_methods_match(build(name, size, small=True), size, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(family="zoo"))
def test_methods_match_grad_cam_package_zoo_full_size(name: str, tmp_path: Path) -> None:
    assert_methods_match(build(name, 224, small=False), 224, tmp_path, n=2)


def test_methods_match_torchvision_backbone(tmp_path: Path) -> None:
    assert_methods_match(build("tv_resnet18", 64, small=False), 64, tmp_path, predicted=False)


def test_methods_match_efficientnet_lite0_imagenet_weights(tmp_path: Path) -> None:
    """The real network: ImageNet weights and its own 1000-class head."""
    model = build("efficientnet_lite0", 96, small=False, weights="imagenet", num_classes=1000)
    assert_methods_match(model, 96, tmp_path, n=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(family="backbone"))
def test_methods_match_backbones_224(name: str, tmp_path: Path) -> None:
    """Full size, every registered backbone (explicit targets: a library's random init makes the
    ranking of its ~1e-9 logits float noise)."""
    extra = {"weights": "imagenet", "num_classes": 1000} if name == "efficientnet_lite0" else {}
    assert_methods_match(build(name, 224, small=False, **extra), 224, tmp_path, n=2, predicted=bool(extra))


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
    """Each supported head op's hand-written backward equals torch autograd on a 5x5 map, for two
    targets per image (explicit, the predicted class, the runner-up)."""
    torch.manual_seed(0)
    fc = nn.Linear(pre_logits(torch.zeros(1, 8, 5, 5)).shape[1], 4)
    head = ClassifierHead(pre_logits, fc).eval()
    features = torch.randn(7, 8, 5, 5, requires_grad=True)
    targets = torch.tensor([[0, -2], [1, 3], [2, -1], [3, 0], [-1, -2], [-1, 1], [2, 2]])
    with torch.no_grad():
        logits, chosen, grads = HeadVJP(head, (8, 5, 5))(features.detach(), targets)
    ref_logits = head(features)
    order = ref_logits.argsort(1, descending=True)
    torch.testing.assert_close(logits, ref_logits.detach(), atol=1e-6, rtol=0)
    for t in range(2):
        want = torch.where(
            targets[:, t] < 0, order.gather(1, (-targets[:, t] - 1).clamp(min=0)[:, None])[:, 0], targets[:, t]
        )
        assert torch.equal(chosen[:, t], want)
        (grad,) = torch.autograd.grad(ref_logits.gather(1, want[:, None]).sum(), features, retain_graph=True)
        torch.testing.assert_close(grads[:, t], grad, atol=1e-6, rtol=0)


def test_torch_reference_equals_package_and_graph_ops(tmp_path: Path) -> None:
    """Our autograd base (analysis' torch reference) gives pytorch-grad-cam's maps for every method."""
    model = build("resnet18", 32, small=True)
    images = torch.from_numpy(real_batch(rgb_spec(32), 3))
    targets = np.array([[0, 4], [1, 2], [3, 3]])
    with TorchCAM(model) as ref:
        ours = ref(images, targets, list(GRADIENT_METHODS))
    for method in GRADIENT_METHODS:
        assert_not_flat(ours[method], method)
        np.testing.assert_allclose(ours[method], package_cams(model, images, method, targets), atol=TOLERANCE)
    a, g = torch.rand(2, 1, 3, 4, 4), torch.randn(2, 2, 3, 4, 4)
    with pytest.raises(StriateError, match="gradient methods"):
        cam("nope", a, g)


def _add_to_output(path: Path, output: str, delta: float) -> None:
    """Edit an exported graph so that `output` comes out `delta` larger (a real, slightly wrong graph)."""
    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        node.output[:] = [f"{o}_exact" if o == output else o for o in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array(delta, np.float32), "injected_error"))
    graph.node.append(helper.make_node("Add", [f"{output}_exact", "injected_error"], [output]))
    onnx.save(model, str(path))


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_export_refuses_a_method_just_over_its_recorded_tolerance(method: str, tmp_path: Path) -> None:
    """An error of 1.5x the tolerance on one method's maps fails the parity check; the figures an
    export writes are the ones checked, against the one tolerance it writes beside them."""
    model = build("resnet18", 32, small=True)
    bundle = export_model(model, list("abcde"), rgb_spec(32), "ok", out_root=tmp_path)
    manifest = Manifest.load(bundle)
    recorded = {p.method: p for p in manifest.explain.parity}
    assert set(recorded) == set(GRADIENT_METHODS)
    assert all(p.tolerance == TOLERANCE and p.passed for p in recorded.values())
    assert manifest.provenance.parity.max_abs_diff_cam == recorded["gradcam"].max_abs_diff
    images = real_batch(rgb_spec(32), 8)
    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    _add_to_output(bundle / EXPLAIN_FILE, CAM_OUTPUTS[method], 1.5 * TOLERANCE)
    results = check_explain_parity(bundle / EXPLAIN_FILE, model, images, logits, TOLERANCE)
    assert not results[method].passed
    assert 1.4 * TOLERANCE < results[method].max_abs_diff < 1.6 * TOLERANCE
    assert all(r.passed for m, r in results.items() if m != method)


def test_float64_fallback_has_no_slack() -> None:
    """Over the tolerance, a map passes only when no farther from float64 than pytorch-grad-cam."""
    over = MethodParity(method="xgradcam", max_abs_diff=2e-4, tolerance=TOLERANCE, package_float64_diff=5e-4)
    assert over.model_copy(update={"float64_diff": 5e-4}).passed
    assert not over.model_copy(update={"float64_diff": 5.01e-4}).passed
    assert not over.passed  # no float64 figures: the tolerance alone decides


def test_cam_arithmetic_is_float64_whatever_the_inputs() -> None:
    """An XGrad-CAM whose channel sums nearly cancel: float32 maps equal float64 arithmetic on the
    same float32 activations and gradients, not float32 arithmetic."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, 64, 7, 7, generator=gen) - 0.5
    a[..., 0, 0] -= a.sum(dim=(-2, -1)) - 1e-6  # every channel sums to ~1e-6
    g = torch.randn(1, 2, 64, 7, 7, generator=gen)
    ours = cam("xgradcam", a, g)
    assert ours.dtype == torch.float32
    exact = cam("xgradcam", a.double(), g.double()).float()
    torch.testing.assert_close(ours, exact, atol=0, rtol=0)
    weights = WEIGHTS["xgradcam"](a, g)  # the same formula in float32 lands elsewhere
    single = (weights * a).sum(dim=-3).relu()
    single = single - single.amin(dim=(-2, -1), keepdim=True)
    single = single / (1e-7 + single.amax(dim=(-2, -1), keepdim=True))
    assert float((single - exact).abs().max()) > 1e-6


def test_supported_head_layers_are_stated_once() -> None:
    assert nn.Hardswish in SUPPORTED_HEAD_LAYERS and nn.Linear in SUPPORTED_HEAD_LAYERS


def test_unsupported_head_is_refused_with_the_module_named(tmp_path: Path) -> None:
    model = build("resnet18", 32, small=True)
    model.head.pre_logits = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(64), nn.Tanh())
    with pytest.raises(StriateError, match=r"'head\.pre_logits\.2' \(BatchNorm1d\).*only AdaptiveAvgPool2d"):
        export_model(model, list("abcde"), rgb_spec(32), "refused", out_root=tmp_path)
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
