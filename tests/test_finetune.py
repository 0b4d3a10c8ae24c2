"""Transfer learning: freeze policies, per-group learning rates, real runs that export, pretrained vs
scratch, and bulk feature extraction."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn

from striate.cli import main as cli_main
from striate.errors import StriateError
from striate.preprocess import preprocess
from training.checkpoint import load_checkpoint
from training.data.datasets import DataSplits, ImageDataset
from training.features import extract_features, read_features, scan_images
from training.finetune import (
    FinetuneConfig,
    SGDLRMult,
    apply_freeze,
    build_finetune_data,
    build_finetune_model,
    build_finetune_optimizer,
    finetune,
)
from training.models import create_model


@pytest.fixture(autouse=True)
def _frugal() -> None:
    torch.set_num_threads(1)


def _config(**kw: object) -> FinetuneConfig:
    base = dict(arch="efficientnet_lite0", data="digits", input_size=32, epochs=1, batch_size=32, report=False)
    base.update(kw)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_probe_freezes_the_body_and_keeps_its_batchnorm_statistics() -> None:
    cfg = _config(mode="probe")
    model = build_finetune_model(cfg, num_classes=10, in_chans=1)
    apply_freeze(model, cfg)
    assert _trainable(model) == {"head.fc.weight", "head.fc.bias"}
    assert "weights" not in model.arch_kwargs  # a checkpoint must not need the pretrained file
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    assert not model.stem.training and not any(s.training for s in model.stages.values())
    assert model.head.training
    model(torch.randn(4, 1, 32, 32))
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_mlp_and_partial_finetune_policies() -> None:
    mlp = _config(mode="mlp", head_hidden=64)
    model = build_finetune_model(mlp, 10, 3)
    apply_freeze(model, mlp)
    assert _trainable(model) == {"head.pre_logits.3.weight", "head.pre_logits.3.bias", "head.fc.weight", "head.fc.bias"}
    assert model.embedding_dim == 64 and model.arch_kwargs["head_hidden"] == 64

    partial = _config(mode="finetune", unfreeze_stages=1)
    model = build_finetune_model(partial, 10, 3)
    apply_freeze(model, partial)
    names = _trainable(model)
    assert any(n.startswith("stages.stage4.") for n in names)
    assert not any(n.startswith(("stem.", "stages.stage1.", "stages.stage3.")) for n in names)
    model.train()
    assert model.stages["stage4"].training and not model.stages["stage3"].training

    with pytest.raises(StriateError, match="has only 4 stages"):
        apply_freeze(model, replace(partial, unfreeze_stages=9))
    with pytest.raises(StriateError, match="needs --weights"):
        _config(mode="probe", weights=None)


def test_body_learns_at_a_fraction_of_the_head_rate() -> None:
    cfg = _config(mode="finetune", body_lr_mult=0.1, optimizer="adamw", lr=1e-3)
    model = build_finetune_model(cfg, 10, 3)
    apply_freeze(model, cfg)
    opt = build_finetune_optimizer(model, cfg)
    mults = {g["name"]: g["lr_mult"] for g in opt.param_groups}
    assert mults == {"head": 1.0, "head_no_decay": 1.0, "body": 0.1, "body_no_decay": 0.1}
    # The multiplier applies at step time on top of the scheduled lr, which stays the base lr.
    w_head, w_body = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    sgd = SGDLRMult([{"params": [w_head], "lr_mult": 1.0}, {"params": [w_body], "lr_mult": 0.1}], lr=0.5)
    (w_head.sum() + w_body.sum()).backward()
    for g in sgd.param_groups:
        g["lr"] = 0.2  # what the engine's schedule does before each step
    sgd.step()
    torch.testing.assert_close(w_head.detach(), torch.full((2,), 0.8))
    torch.testing.assert_close(w_body.detach(), torch.full((2,), 0.98))
    assert [g["lr"] for g in sgd.param_groups] == [0.2, 0.2]


def _subset(splits: DataSplits, n_train: int, n_eval: int = 100) -> DataSplits:
    """A random subset of each split (keeps the CPU budget of these tests small)."""
    rng = np.random.default_rng(0)

    def pick(ds: ImageDataset, n: int) -> ImageDataset:
        keep = np.sort(rng.choice(len(ds.indices), min(n, len(ds.indices)), replace=False))
        return ImageDataset(ds.source, ds.indices[keep], ds.transform)

    return replace(
        splits, train=pick(splits.train, n_train), val=pick(splits.val, n_eval), test=pick(splits.test, n_eval)
    )


def test_probe_run_writes_a_checkpoint_that_exports(tmp_path: Path) -> None:
    from training.export import export_checkpoint

    cfg = _config(mode="probe", lr=1e-2, epochs=2, warmup_epochs=0.0, out=str(tmp_path / "run"))
    data = _subset(build_finetune_data(cfg), 200)
    result = finetune(cfg, data=data, progress=False)
    assert result.test_metrics["accuracy"] > 0.4  # chance is 0.1: frozen ImageNet features, 200 digits
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt.arch == "efficientnet_lite0" and "weights" not in ckpt.arch_kwargs
    assert ckpt.config["mode"] == "probe" and ckpt.preprocessing.mean == (0.5,)
    bundle = export_checkpoint(tmp_path / "run" / "best.pt", "digits-lite0", out_root=tmp_path / "exported")
    model = ckpt.build_model()
    img = Image.fromarray(data.test.source.arrays[int(data.test.indices[0])])
    x = preprocess(img, ckpt.preprocessing)[None]
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"image": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(torch.from_numpy(x)).numpy(), atol=1e-4)


@pytest.mark.slow
def test_pretrained_beats_scratch_under_the_same_budget(tmp_path: Path) -> None:
    """Same architecture, data (300 digits), epochs and schedule: ImageNet weights win clearly."""
    accs = {}
    for name, weights in (("pretrained", "imagenet"), ("scratch", None)):
        cfg = _config(mode="finetune", weights=weights, epochs=3, lr=2e-3, body_lr_mult=0.5, out=str(tmp_path / name))
        data = _subset(build_finetune_data(cfg), 300)
        accs[name] = finetune(cfg, data=data, progress=False).test_metrics["accuracy"]
    assert accs["pretrained"] > accs["scratch"] + 0.15, accs


# --------------------------------------------------------------------------------------- features
@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "cat").mkdir(parents=True)
    (root / "cup").mkdir()
    Image.fromarray(skdata.chelsea()).save(root / "cat" / "chelsea.png")
    Image.fromarray(skdata.coffee()).save(root / "cup" / "coffee.jpg")
    Image.fromarray(skdata.coffee()[::-1]).save(root / "cup" / "flipped.jpg")
    (root / "cup" / "broken.jpg").write_bytes(b"not an image at all")
    return root


def test_features_match_the_model_embedding(photo_folder: Path) -> None:
    model = create_model("tv_resnet18", num_classes=4, input_size=64).eval()
    images = scan_images(photo_folder)
    assert images.labels == ["cat", "cup", "cup", "cup"]
    vectors, kept = extract_features(model, model.preprocessing, images, batch_size=2, progress=False)
    assert [images.paths[i].name for i in kept] == ["chelsea.png", "coffee.jpg", "flipped.jpg"]
    x = torch.from_numpy(preprocess(Image.open(photo_folder / "cup" / "coffee.jpg"), model.preprocessing))[None]
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(vectors[1:2], expected, rtol=1e-5, atol=1e-5)
    stage, _ = extract_features(model, model.preprocessing, images, layer="stage2", progress=False)
    assert stage.shape == (3, 128)
    with pytest.raises(StriateError, match=r"unknown layer 'stage7'.*stage4"):
        extract_features(model, model.preprocessing, images, layer="stage7", progress=False)
    with pytest.raises(StriateError, match=r"cannot read image .*broken\.jpg"):
        extract_features(model, model.preprocessing, images, progress=False, on_bad_image="fail")


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_features_command_writes_vectors_paths_and_labels(
    photo_folder: Path, tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"emb{suffix}"
    code = cli_main(
        [
            "features",
            "--backbone",
            "efficientnet_lite0",
            "--data-dir",
            str(photo_folder),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    vectors, paths, labels = read_features(out)
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    assert [Path(p).name for p in paths] == ["chelsea.png", "coffee.jpg", "flipped.jpg"]
    assert labels == ["cat", "cup", "cup"]
    # ImageNet features: the two coffee photos are closer to each other than to the cat.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[1] @ unit[2] > unit[0] @ unit[1]
    assert "1 unreadable skipped" in capsys.readouterr().out


def test_features_command_errors(photo_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli_main(
            ["features", "--backbone", "resnet19", "--data-dir", str(photo_folder), "--out", str(tmp_path / "e.npy")]
        )
        == 2
    )
    assert (
        cli_main(
            [
                "features",
                "--backbone",
                "efficientnet_lite0",
                "--data-dir",
                str(photo_folder),
                "--out",
                str(tmp_path / "e.txt"),
            ]
        )
        == 2
    )
    assert (
        cli_main(
            [
                "features",
                "--backbone",
                "efficientnet_lite0",
                "--data-dir",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "e.npy"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown backbone 'resnet19'" in err and "must end with .npy or .parquet" in err
    assert "data folder not found" in err


def test_cli_mlp_run_resumes_and_its_checkpoint_extracts_features(
    tmp_path: Path, photo_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    common = ["--no-report", "--no-progress"]
    assert (
        cli_main(
            [
                "finetune",
                "--backbone",
                "efficientnet_lite0",
                "--data",
                "shapes",
                "--shapes-per-class",
                "8",
                "--input-size",
                "32",
                "--epochs",
                "1",
                "--mode",
                "mlp",
                "--head-hidden",
                "16",
                "--out",
                str(run),
                *common,
            ]
        )
        == 0
    )
    assert cli_main(["finetune", "--resume", str(run), "--epochs", "2", *common]) == 0
    history = __import__("json").loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt.epoch == 2 and ckpt.arch_kwargs["head_hidden"] == 16 and ckpt.config["mode"] == "mlp"
    out = tmp_path / "emb.npy"
    assert (
        cli_main(
            [
                "features",
                "--checkpoint",
                str(run / "best.pt"),
                "--data-dir",
                str(photo_folder),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    vectors, _, labels = read_features(out)
    assert vectors.shape == (3, 16) and labels == ["cat", "cup", "cup"]
    assert cli_main(["finetune", "--mode", "probe", "--unfreeze-stages", "1", "--data", "shapes"]) == 2
    assert "--unfreeze-stages only applies to --mode finetune" in capsys.readouterr().err
