"""Test bundles and a real uvicorn server for the service tests.

`build_bundle` exports a tiny torch CNN with `torch.onnx.export` into the bundle layout the exporter
writes (model.onnx with logits/embedding/<stage>_pooled/<stage>_map, explain.onnx with Grad-CAM,
manifest.json), so the service is tested on real onnxruntime sessions before (and besides) the
real default bundle `exported/digits/1/`. Torch is used here, in tests only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# The real default bundle; STRIATE_TEST_DEFAULT_BUNDLE points the e2e tests at another digits bundle.
DEFAULT_BUNDLE = Path(os.environ.get("STRIATE_TEST_DEFAULT_BUNDLE", REPO / "exported" / "digits" / "1"))
STAGES = ("s1", "s2")


def _tiny_net(in_chans: int, num_classes: int, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class TinyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU())
            self.stages = nn.ModuleDict(
                {
                    "s1": nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
                    "s2": nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
                }
            )
            self.fc = nn.Linear(16, num_classes)

        def stage_maps(self, x):
            x = self.stem(x)
            maps = {}
            for name, stage in self.stages.items():
                x = stage(x)
                maps[name] = x
            return maps

        def forward(self, x):
            maps = self.stage_maps(x)
            embedding = maps["s2"].mean(dim=(2, 3))
            outs = [self.fc(embedding), embedding]
            for name in STAGES:
                outs += [maps[name].mean(dim=(2, 3)), maps[name]]
            return tuple(outs)

    class Explain(nn.Module):
        """Grad-CAM for a GAP + linear head: channel weights are fc rows (the mean's 1/hw cancels)."""

        def __init__(self, net: TinyNet) -> None:
            super().__init__()
            self.net = net

        def forward(self, x, target):
            fmap = self.net.stage_maps(x)["s2"]
            logits = self.net.fc(fmap.mean(dim=(2, 3)))
            target = torch.where(target < 0, logits.argmax(dim=1), target)
            weights = self.net.fc.weight[target]  # [N, C]
            cam = torch.relu((weights[:, :, None, None] * fmap).sum(dim=1))
            cam = cam - cam.amin(dim=(1, 2), keepdim=True)
            cam = cam / (cam.amax(dim=(1, 2), keepdim=True) + 1e-7)
            return logits, cam

    net = TinyNet().eval()
    return net, Explain(net).eval()


def build_bundle(
    root: Path,
    name: str = "tiny",
    version: int = 1,
    color_mode: str = "L",
    size: tuple[int, int] = (8, 8),
    num_classes: int = 10,
    seed: int = 0,
    with_explain: bool = True,
) -> Path:
    """Export a tiny CNN into `root/<name>/<version>/` and return that directory."""
    import onnxruntime
    import torch

    from striate.manifest import (
        ExplainSpec,
        FeatureLayer,
        InputSpec,
        Manifest,
        Preprocessing,
        Provenance,
        TensorSpec,
    )

    channels = 1 if color_mode == "L" else 3
    net, explain = _tiny_net(channels, num_classes, seed)
    out = Path(root) / name / str(version)
    out.mkdir(parents=True, exist_ok=True)
    h, w = size
    x = torch.randn(2, channels, h, w)
    names = ["logits", "embedding"]
    for stage in STAGES:
        names += [f"{stage}_pooled", f"{stage}_map"]
    with torch.no_grad():
        torch.onnx.export(
            net,
            (x,),
            str(out / "model.onnx"),
            input_names=["image"],
            output_names=names,
            dynamic_axes={n: {0: "batch"} for n in ["image", *names]},
            dynamo=False,
            opset_version=17,
        )
        if with_explain:
            torch.onnx.export(
                explain,
                (x, torch.tensor([-1, 1])),
                str(out / "explain.onnx"),
                input_names=["image", "target"],
                output_names=["logits", "cam"],
                dynamic_axes={n: {0: "batch"} for n in ["image", "target", "logits", "cam"]},
                dynamo=False,
                opset_version=17,
            )
    s2_hw = ((h + 1) // 2, (w + 1) // 2)
    labels = tuple(f"class_{i}" for i in range(num_classes))
    stage_dims = {"s1": (8, h, w), "s2": (16, *s2_hw)}
    outputs = [TensorSpec(name="logits", shape=(-1, num_classes)), TensorSpec(name="embedding", shape=(-1, 16))]
    layers = [FeatureLayer(name="embedding", output="embedding", dim=16)]
    for stage, (c, sh, sw) in stage_dims.items():
        outputs += [
            TensorSpec(name=f"{stage}_pooled", shape=(-1, c)),
            TensorSpec(name=f"{stage}_map", shape=(-1, c, sh, sw)),
        ]
        layers.append(
            FeatureLayer(name=stage, output=f"{stage}_pooled", dim=c, map_output=f"{stage}_map", map_shape=(c, sh, sw))
        )
    mean = (0.5,) * channels
    std = (0.25,) * channels
    manifest = Manifest(
        name=name,
        version=version,
        architecture="tinynet",
        labels=labels,
        input=InputSpec(channels=channels, height=h, width=w),
        preprocessing=Preprocessing(
            color_mode=color_mode, resize_mode="exact", resize_size=size, crop_size=size, mean=mean, std=std
        ),
        outputs=tuple(outputs),
        layers=tuple(layers),
        explain=ExplainSpec(graph="explain.onnx", target_layer="s2", cam_shape=s2_hw) if with_explain else None,
        metrics={"accuracy": 0.5},
        provenance=Provenance(
            created=datetime.now(UTC).isoformat(), torch=torch.__version__, onnxruntime=onnxruntime.__version__
        ),
    )
    manifest.dump(out)
    return out


def build_model_dir(root: Path, with_default: bool = True) -> Path:
    """A model repository: tiny (v1, v2), tinyrgb, a broken bundle and, when present, the real digits."""
    root.mkdir(parents=True, exist_ok=True)
    build_bundle(root, "tiny", 1, seed=0)
    build_bundle(root, "tiny", 2, seed=1)
    build_bundle(root, "tinyrgb", 1, color_mode="RGB", size=(16, 12), num_classes=3, seed=2)
    broken = root / "broken" / "1"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "manifest.json").write_text('{"name": "broken"}', encoding="utf-8")
    if with_default and (DEFAULT_BUNDLE / "manifest.json").exists():
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


def make_settings(model_dir: Path, **overrides):
    """Settings for a test server (environment variables do not leak in: everything is explicit)."""
    from service.settings import Settings

    values = {"model_dir": model_dir, "log_level": "warning", "device": "cpu", "max_batch_delay_ms": 2.0}
    return Settings(**(values | overrides))


def served_models() -> list[str]:
    """The e2e tests run on the tiny bundle, and on the real default bundle when it exists."""
    return ["tiny", "digits"] if (DEFAULT_BUNDLE / "manifest.json").exists() else ["tiny"]


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
