"""Test bundles and a real uvicorn server for the service tests.

`build_bundle` exports a tiny real CNN (a `StriateModel` with stages `s1`, `s2`) with the exporter's
public API (`training.export.export_model`), so the service is tested on exactly what `striate export`
writes: model.onnx, explain.onnx and manifest.json, parity-checked. Each distinct bundle is exported
once per session and copied from that cache. Torch is used here, in tests only.

`make_settings` builds service settings from explicit values only: `STRIATE_*` variables in the
caller's environment never reach a test server.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
# The real default bundle; STRIATE_TEST_DEFAULT_BUNDLE points the e2e tests at another digits bundle.
DEFAULT_BUNDLE = Path(os.environ.get("STRIATE_TEST_DEFAULT_BUNDLE", REPO / "exported" / "digits" / "1"))
STAGES = ("s1", "s2")


def tiny_net(in_chans: int, num_classes: int, seed: int):
    """A two-stage CNN on the Striate model interface (GAP + linear head), seeded."""
    import torch
    from torch import nn

    from training.models.base import ClassifierHead, StriateModel

    class TinyNet(StriateModel):
        arch_name = "tinynet"

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU())
            self.stages = nn.ModuleDict(
                {
                    "s1": nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
                    "s2": nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
                }
            )
            self.head = ClassifierHead(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(16, num_classes))
            self.arch_kwargs = {"in_chans": in_chans, "num_classes": num_classes}

    torch.manual_seed(seed)
    return TinyNet().eval()


_CACHE = Path(tempfile.mkdtemp(prefix="striate-test-bundles-"))
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


@functools.cache
def _exported(name: str, version: int, color_mode: str, size: tuple[int, int], num_classes: int, seed: int) -> Path:
    """Export one tiny bundle into the session cache (once per distinct argument set)."""
    from striate.manifest import Preprocessing
    from training.export import export_model

    channels = 1 if color_mode == "L" else 3
    spec = Preprocessing(
        color_mode=color_mode,
        resize_mode="exact",
        resize_size=size,
        crop_size=size,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )
    labels = [f"class_{i}" for i in range(num_classes)]
    root = _CACHE / f"{name}-{version}-{color_mode}-{size[0]}x{size[1]}-{num_classes}-{seed}"
    return export_model(
        tiny_net(channels, num_classes, seed),
        labels,
        spec,
        name,
        version,
        root,
        metrics={"accuracy": 0.5},
        data="none (untrained test model)",
    )


def build_bundle(
    root: Path,
    name: str = "tiny",
    version: int = 1,
    color_mode: str = "L",
    size: tuple[int, int] = (8, 8),
    num_classes: int = 10,
    seed: int = 0,
) -> Path:
    """Export a tiny CNN into `root/<name>/<version>/` (with `striate export`'s code) and return it."""
    out = Path(root) / name / str(version)
    shutil.copytree(_exported(name, version, color_mode, tuple(size), num_classes, seed), out)
    return out


def as_first_layout(bundle, seed: int) -> None:
    """Rewrite an exported tiny bundle the way Striate's first exporter wrote it: explain.onnx takes
    one `target` per image (-1: the predicted class) and returns Grad-CAM as `cam` [N, h, w], and the
    manifest's explain section has the first layout's keys."""
    import torch
    from torch import nn

    net = tiny_net(1, 10, seed)

    class FirstLayout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x, target):
            fmap = self.net.forward_features(x)
            logits = self.net.head.fc(fmap.mean(dim=(2, 3)))
            target = torch.where(target < 0, logits.argmax(dim=1), target)
            cam = torch.relu((self.net.head.fc.weight[target][:, :, None, None] * fmap).sum(dim=1))
            cam = cam - cam.amin(dim=(1, 2), keepdim=True)
            return logits, cam / (cam.amax(dim=(1, 2), keepdim=True) + 1e-7)

    names = ["image", "target", "logits", "cam"]
    with torch.no_grad():
        torch.onnx.export(
            FirstLayout().eval(),
            (torch.randn(2, 1, 8, 8), torch.tensor([-1, 1])),
            str(bundle / "explain.onnx"),
            input_names=names[:2],
            output_names=names[2:],
            dynamic_axes={n: {0: "batch"} for n in names},
            dynamo=False,
            opset_version=17,
        )
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["explain"] = {
        "method": "gradcam",
        "graph": "explain.onnx",
        "target_layer": "s2",
        "target_input": "target",
        "cam_output": "cam",
        "logits_output": "logits",
        "resolution": "feature",
        "cam_shape": [4, 4],
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def without_gradient_graph(bundle) -> None:
    """A bundle whose head could not be differentiated: no explain.onnx, forward methods only."""
    (bundle / "explain.onnx").unlink()
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["explain"] |= {"graph": None, "cam_outputs": {}, "parity": []}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def build_model_dir(root: Path, with_default: bool = True) -> Path:
    """A model repository: tiny (v1, v2), tinyrgb, a broken bundle and the real default digits bundle."""
    root.mkdir(parents=True, exist_ok=True)
    build_bundle(root, "tiny", 1, seed=0)
    build_bundle(root, "tiny", 2, seed=1)
    build_bundle(root, "tinyrgb", 1, color_mode="RGB", size=(16, 12), num_classes=3, seed=2)
    broken = root / "broken" / "1"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "manifest.json").write_text('{"name": "broken"}', encoding="utf-8")
    if with_default:
        assert (DEFAULT_BUNDLE / "manifest.json").is_file(), f"the default bundle {DEFAULT_BUNDLE} is committed"
        shutil.copytree(DEFAULT_BUNDLE, root / "digits" / "1")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def run_server(settings) -> Iterator[str]:
    """Serve `create_app(settings)` with a real uvicorn on a free loopback port, in a thread."""
    import uvicorn

    from service.app import create_app

    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def digits_png_bytes(index: int = 0) -> bytes:
    """A real sklearn digit as an 8-bit grayscale PNG (value * 255 / 16, like the digits dataset)."""
    import io

    from PIL import Image
    from sklearn.datasets import load_digits

    arr = load_digits().images[index]
    img = Image.fromarray(np.rint(arr * 255.0 / 16.0).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class ExplicitSettings(Settings):
    """`Settings` from its arguments alone: no `STRIATE_*` variable, no .env file, no secrets dir."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_other_sources):
        return (init_settings,)


# What every test server gets unless a test says otherwise: quiet, CPU, a short batching delay.
TEST_DEFAULTS = {"log_level": "warning", "device": "cpu", "max_batch_delay_ms": 2.0}


def make_settings(model_dir: Path, **overrides) -> Settings:
    """Settings for a test server, from explicit values only (the caller's environment is ignored)."""
    return ExplicitSettings(**({"model_dir": model_dir} | TEST_DEFAULTS | overrides))


def served_models() -> list[str]:
    """The e2e tests run on the tiny bundle and on the real default bundle (committed, so never skipped)."""
    return ["tiny", "digits"]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def server(model_dir) -> Iterator[str]:
    with run_server(make_settings(model_dir)) as url:
        yield url


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c
