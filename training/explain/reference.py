"""Torch references for the gradient methods: our base on autograd, and pytorch-grad-cam itself.

`TorchCAM` hooks the target layer, takes activations and autograd gradients for every target and
applies the same weights functions as the exported graph (cams.py); analysis uses it on
checkpoints, and in float64 it is the yardstick the export's parity falls back on. `package_cams`
runs pytorch-grad-cam's class of the same name, the reference users compare against, and
`package_float64_diff` says how far it lands from that yardstick.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from striate.explain.methods import METHODS

from .cams import cam

# Torch thread counts pytorch-grad-cam is run with when its distance from float64 is measured: its
# convolutions sum in a different order on one thread than on several, which moves an ill-
# conditioned map by as much as our own float32 forward does (MobileNetV3-Large XGrad-CAM at 224:
# 4.3e-4 from float64 on one thread, 6.0e-4 on two or more).
PACKAGE_THREADS = (1, 4)


class TorchCAM:
    """Gradient CAMs of `model` at `layer` (default: its last stage), by autograd. Call `release()`."""

    def __init__(self, model: nn.Module, layer: nn.Module | None = None) -> None:
        self.model = model
        self.layer = layer if layer is not None else list(model.stages.values())[-1]
        self._activation: torch.Tensor | None = None
        self._hook = self.layer.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args, output: torch.Tensor) -> None:
        self._activation = output

    def release(self) -> None:
        self._hook.remove()

    def __enter__(self) -> TorchCAM:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __call__(self, images: torch.Tensor, targets: np.ndarray, methods: list[str]) -> dict[str, np.ndarray]:
        """{method: [N, T, h, w]} for explicit class indices `targets` [N, T] (no negatives)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                logits = self.model(images)
                a = self._activation
                assert a is not None, "the target layer did not run"
                chosen = torch.as_tensor(np.asarray(targets), dtype=torch.long)
                grads = []
                for t in range(chosen.shape[1]):
                    score = logits.gather(1, chosen[:, t : t + 1]).sum()
                    (g,) = torch.autograd.grad(score, a, retain_graph=t + 1 < chosen.shape[1])
                    grads.append(g)
            g = torch.stack(grads, dim=1).detach()
            a = a.detach().unsqueeze(1)
            return {m: cam(m, a, g).numpy() for m in methods}
        finally:
            self.model.train(was_training)
            self._activation = None


def float64_cams(
    model: nn.Module, images: np.ndarray, targets: np.ndarray, methods: list[str], layer_path: str | None = None
) -> dict[str, np.ndarray]:
    """The float64 reference: our base on a double-precision copy of the model, at module `layer_path`
    (default: the last stage of a Striate model)."""
    double = copy.deepcopy(model).double().eval()
    layer = double.get_submodule(layer_path) if layer_path else None
    with TorchCAM(double, layer) as ref:
        return ref(torch.from_numpy(np.asarray(images, np.float64)), targets, methods)


def package_cams(
    model: nn.Module, images: torch.Tensor, method: str, targets: np.ndarray, layer: nn.Module | None = None
) -> np.ndarray:
    """[N, T, h, w]: pytorch-grad-cam's class for `method` at `layer` (default: the last stage of a
    Striate model), at feature resolution.

    The package resizes its [0, 1] map to the input size with cv2; here the target size is the
    feature map's own size, which cv2.resize leaves untouched, so nothing else differs.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    base = getattr(pytorch_grad_cam, METHODS[method].package_class)
    layer = layer if layer is not None else list(model.stages.values())[-1]
    sizes: list[tuple[int, int]] = []
    handle = layer.register_forward_hook(lambda m, args, out: sizes.append(tuple(out.shape[-2:])))
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        handle.remove()
    fh, fw = sizes[-1]

    class FeatureResolution(base):
        def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
            return int(fw), int(fh)

    explainer = FeatureResolution(model, [layer])
    try:
        columns = [
            explainer(images, [ClassifierOutputTarget(int(t)) for t in targets[:, j]]) for j in range(targets.shape[1])
        ]
    finally:
        explainer.activations_and_grads.release()
    return np.stack(columns, axis=1)


def package_float64_diff(
    model: nn.Module,
    images: np.ndarray,
    method: str,
    targets: np.ndarray,
    reference: np.ndarray,
    layer: nn.Module | None = None,
) -> float:
    """How far pytorch-grad-cam's own maps land from the float64 `reference`: the farthest of its
    runs on `PACKAGE_THREADS` torch threads (the thread setting is restored afterwards)."""
    before = torch.get_num_threads()
    x = torch.from_numpy(np.asarray(images, np.float32))
    try:
        diffs = []
        for threads in PACKAGE_THREADS:
            torch.set_num_threads(threads)
            maps = package_cams(model, x, method, targets, layer)
            diffs.append(float(np.max(np.abs(maps.astype(np.float64) - reference))))
        return max(diffs)
    finally:
        torch.set_num_threads(before)
