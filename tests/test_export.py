"""Export to an ONNX bundle: layout, manifest, dynamic batch, versions, self-checks, INT8, CLI, default bundle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from striate.cli import main
from striate.errors import StriateError
from striate.manifest import Manifest, Preprocessing
from training.checkpoint import Checkpoint, file_sha256, save_checkpoint
from training.config import TrainConfig
from training.export import export_checkpoint, export_model
from training.export.images import real_batch
from training.export.parity import session
from training.models import create_model

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CKPT = REPO / "checkpoints" / "digits_default.pt"
DEFAULT_BUNDLE = REPO / "exported" / "digits" / "1"
SIZE = 16
ARCH_KWARGS = {"num_classes": 10, "in_chans": 1, "input_size": SIZE, "base_width": 8}
SPEC = Preprocessing(color_mode="L", resize_size=(SIZE, SIZE), crop_size=(SIZE, SIZE), mean=(0.3,), std=(0.4,))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained resnet18 for the digits, saved as a real Striate checkpoint."""
    torch.manual_seed(0)
    model = create_model("resnet18", **ARCH_KWARGS)
    config = TrainConfig(arch="resnet18", data="digits", input_size=SIZE, base_width=8, epochs=1)
    ckpt = Checkpoint(
        arch="resnet18",
        arch_kwargs=ARCH_KWARGS,
        state_dict=model.state_dict(),
        labels=[str(i) for i in range(10)],
        preprocessing=SPEC,
        metrics={"test_accuracy": 0.5},
        config=config.to_dict(),
        data="digits",
        versions={"torch": str(torch.__version__)},
    )
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def bundle(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_checkpoint(checkpoint, "tiny-digits", out_root=tmp_path_factory.mktemp("exported"))


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_bundle_layout_and_manifest(bundle: Path, checkpoint: Path) -> None:
    assert bundle.name == "1" and bundle.parent.name == "tiny-digits"
    assert sorted(p.name for p in bundle.iterdir()) == ["explain.onnx", "manifest.json", "model.onnx"]
    manifest = Manifest.load(bundle)
    assert (manifest.name, manifest.version, manifest.architecture) == ("tiny-digits", 1, "resnet18")
    assert manifest.labels == tuple(str(i) for i in range(10))
    assert manifest.preprocessing == SPEC and (manifest.input.channels, manifest.input.height) == (1, SIZE)
    assert manifest.metrics["test_accuracy"] == 0.5
    prov = manifest.provenance
    assert prov.checkpoint_sha256 == file_sha256(checkpoint) and prov.opset == 17 and prov.data == "digits"
    assert prov.torch == torch.__version__ and prov.onnx == onnx.__version__
    assert prov.parity is not None and prov.parity.images >= 8
    assert max(prov.parity.max_abs_diff_logits, prov.parity.max_abs_diff_embedding) <= 1e-4
    assert prov.parity.max_abs_diff_cam is not None and prov.parity.max_abs_diff_cam <= 1e-4
    # Every output the manifest names is in the graph, in order, with its shape.
    sess = session(bundle / "model.onnx")
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == [o.name for o in manifest.outputs]
    stages = ["layer1", "layer2", "layer3", "layer4"]
    assert [layer.name for layer in manifest.layers] == ["embedding", *stages]
    assert manifest.explain is not None and manifest.explain.target_layer == "layer4"
    assert manifest.explain.cam_shape == manifest.layer("layer4").map_shape[1:]
    explain = session(bundle / manifest.explain.graph)
    assert [i.name for i in explain.get_inputs()] == ["image", "targets"]
    cams = [f"cam_{m}" for m in ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam")]
    assert [o.name for o in explain.get_outputs()] == ["logits", "explained", *cams]


@pytest.mark.parametrize("n", [1, 7, 64])
def test_dynamic_batch_outputs_agree_with_manifest_and_torch(bundle: Path, checkpoint: Path, n: int) -> None:
    from training.checkpoint import load_checkpoint

    manifest = Manifest.load(bundle)
    model = load_checkpoint(checkpoint).build_model()
    images = real_batch(manifest.preprocessing, n)
    outputs = session(bundle / "model.onnx").run(None, {"image": images})
    for spec, value in zip(manifest.outputs, outputs, strict=True):
        assert value.shape == (n, *spec.shape[1:]), spec.name
    with torch.no_grad():
        np.testing.assert_allclose(outputs[0], model(torch.from_numpy(images)).numpy(), atol=1e-4, rtol=0)
    logits, _, cam = session(bundle / "explain.onnx").run(
        ["logits", "explained", "cam_gradcam"], {"image": images, "targets": np.full((n, 1), -1, np.int64)}
    )
    assert cam.shape == (n, 1, *manifest.explain.cam_shape)
    np.testing.assert_allclose(logits, outputs[0], atol=1e-5, rtol=0)
    # An image's result does not depend on the batch it came in.
    single = session(bundle / "model.onnx").run(["logits"], {"image": images[-1:]})[0]
    np.testing.assert_allclose(single[0], outputs[0][-1], atol=1e-5, rtol=0)


def test_versions_are_never_overwritten(checkpoint: Path, tmp_path: Path) -> None:
    first = export_checkpoint(checkpoint, "digits", out_root=tmp_path)
    before = _digest(first)
    assert first.name == "1"
    with pytest.raises(StriateError, match="already exists; versions are never overwritten"):
        export_checkpoint(checkpoint, "digits", version=1, out_root=tmp_path)
    assert _digest(first) == before
    assert export_checkpoint(checkpoint, "digits", version=7, out_root=tmp_path).name == "7"
    assert export_checkpoint(checkpoint, "digits", out_root=tmp_path).name == "8"
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["1", "7", "8"]  # no temp left


def test_failed_parity_fails_loudly_and_writes_nothing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", **ARCH_KWARGS).eval()
    honest_forward = model.forward
    model.forward = lambda x: honest_forward(x) + 0.01  # the graphs cannot reproduce this
    with pytest.raises(StriateError, match="parity check failed: onnxruntime and torch logits differ"):
        export_model(model, [str(i) for i in range(10)], SPEC, "broken", out_root=tmp_path)
    assert not (tmp_path / "broken").exists()  # not even an empty model folder


def test_bad_arguments_are_clear_errors(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(StriateError, match="bad model name"):
        export_checkpoint(checkpoint, "Bad Name", out_root=tmp_path)
    with pytest.raises(StriateError, match="unknown quantization"):
        export_checkpoint(checkpoint, "x", out_root=tmp_path, quantize="int4")
    with pytest.raises(StriateError, match="checkpoint not found"):
        export_checkpoint(tmp_path / "missing.pt", "x", out_root=tmp_path)
    model = create_model("resnet18", **ARCH_KWARGS)
    with pytest.raises(StriateError, match="3 labels for a model with 10 classes"):
        export_model(model, ["a", "b", "c"], SPEC, "x", out_root=tmp_path)


def _predictions(graph: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, argmax) of a bundle graph run here in onnxruntime, 64 images at a time."""
    sess = session(graph)
    logits = np.concatenate([sess.run(["logits"], {"image": images[i : i + 64]})[0] for i in range(0, len(images), 64)])
    return logits, logits.argmax(1)


def _test_split(ckpt: Checkpoint) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's held-out test split, as its recorded data config (seed included) defines it."""
    from training.data import build_eval_dataset

    dataset = build_eval_dataset(TrainConfig.from_dict(ckpt.config), ckpt.preprocessing, "test")
    images, targets = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return np.stack([t.numpy() for t in images]).astype(np.float32), np.asarray(targets)


def test_int8_accuracy_is_measured_by_running_the_int8_graph(tmp_path: Path) -> None:
    """On the trained default model: the INT8 graph, run here on the held-out split, loses at most a point."""
    from training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(DEFAULT_CKPT)
    images, targets = _test_split(ckpt)
    n = len(targets)
    float_path = export_checkpoint(DEFAULT_CKPT, "digits", out_root=tmp_path)
    path = export_checkpoint(DEFAULT_CKPT, "digits", out_root=tmp_path, quantize="int8", calib_images=64)
    assert path.name == "2"
    float_logits, float_pred = _predictions(float_path / "model.onnx", images)
    int8_logits, int8_pred = _predictions(path / "model.onnx", images)
    float_acc, int8_acc = np.mean(float_pred == targets), np.mean(int8_pred == targets)
    # It is the test split: the float graph scores what training measured on it with torch.
    assert abs(float_acc - ckpt.metrics["test_acc"]) <= 1 / n
    # The manifest's figures are these measurements (within one image), not figures of another graph.
    manifest = Manifest.load(path)
    m = manifest.metrics
    assert manifest.provenance.quantization == "int8-static-qdq"
    assert m["calibration_images"] == 64 and m["heldout_images"] == n  # the checkpoint's whole test split
    assert abs(m["accuracy_float32"] - float_acc) <= 1 / n and abs(m["accuracy_int8"] - int8_acc) <= 1 / n
    assert int8_acc >= float_acc - 0.01  # the README's promise: at most one point lost
    assert np.mean(int8_pred == float_pred) >= 0.99  # and nearly every prediction kept
    # The graph really is quantized: QDQ nodes, and logits that are not the float graph's.
    ops = {node.op_type for node in onnx.load(path / "model.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert np.abs(int8_logits - float_logits).mean() > 1e-3
    # Grad-CAM stays float32 and still runs.
    batch = real_batch(manifest.preprocessing, 3)
    (cam,) = session(path / "explain.onnx").run(
        ["cam_gradcam"], {"image": batch, "targets": np.array([[-1], [2], [5]])}
    )
    assert cam.shape == (3, 1, *manifest.explain.cam_shape)


def test_int8_scores_belong_to_the_int8_graph(checkpoint: Path, tmp_path: Path) -> None:
    """Held-out labels = the float model's own predictions, so float32 scores 1.0 and INT8 its agreement.

    This untrained net has small logit margins, so quantization flips a few predictions: a manifest
    that scored the float graph as "int8" would claim 1.0 here.
    """
    from training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    images, _ = _test_split(ckpt)
    model = ckpt.build_model().eval()
    with torch.no_grad():
        pseudo = model(torch.from_numpy(images)).argmax(1).numpy()
    labels = [str(i) for i in range(10)]
    path = export_model(
        model,
        labels,
        SPEC,
        "tiny",
        out_root=tmp_path,
        quantize="int8",
        calibration=images[:64],
        heldout=(images, pseudo),
    )
    _, int8_pred = _predictions(path / "model.onnx", images)
    agreement = np.mean(int8_pred == pseudo)
    assert 0.9 < agreement < 1.0, "quantization must flip some predictions of this net for the test to bite"
    metrics = Manifest.load(path).metrics
    assert metrics["accuracy_float32"] == 1.0
    assert abs(metrics["accuracy_int8"] - agreement) <= 1 / len(pseudo)


def test_cli_export(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(checkpoint), "--name", "cli", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'cli' / '1'}" in out and "parity on 8 real images" in out
    assert main(["export", str(checkpoint), "--name", "cli", "--out", str(tmp_path), "--version", "1"]) == 2
    assert "versions are never overwritten" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope.pt"), "--name", "cli", "--out", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--name", "cli", "--out", str(tmp_path), "--calib-images", "5"]) == 2
    assert "--calib-images only applies with --quantize int8" in capsys.readouterr().err


def test_default_bundle_reexports_identically(tmp_path: Path) -> None:
    """The committed exported/digits/1 is what its checkpoint exports to today."""
    assert DEFAULT_CKPT.is_file() and DEFAULT_BUNDLE.is_dir(), "the default checkpoint and bundle are committed"
    fresh = export_checkpoint(DEFAULT_CKPT, "digits", version=1, out_root=tmp_path)
    committed = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    again = json.loads((fresh / "manifest.json").read_text())
    for doc in (committed, again):
        doc["provenance"].pop("created")
        doc["provenance"].pop("parity")  # float noise differs between machines; the bound is checked below
        doc["explain"].pop("parity")
        doc["provenance"]["checkpoint"] = Path(doc["provenance"]["checkpoint"]).name
    assert again == committed
    assert Manifest.load(DEFAULT_BUNDLE).provenance.parity.max_abs_diff_logits <= 1e-4
    manifest = Manifest.load(DEFAULT_BUNDLE)
    images = real_batch(manifest.preprocessing, 16)
    targets = (np.arange(32, dtype=np.int64) % 10 - 3).reshape(16, 2)  # some "k-th most probable" (-1..-3)
    for graph, feeds in (("model.onnx", {"image": images}), ("explain.onnx", {"image": images, "targets": targets})):
        for a, b in zip(
            session(DEFAULT_BUNDLE / graph).run(None, feeds), session(fresh / graph).run(None, feeds), strict=True
        ):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
