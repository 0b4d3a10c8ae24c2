"""Pretrained backbones: every one builds and matches its library's own forward; real ImageNet weights
classify real photos; bad names and bad weight files fail clearly."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn

from striate.errors import StriateError
from striate.preprocess import preprocess
from training.models import backbones as B
from training.models import create_model, list_models

BACKBONES = list_models(family="backbone")
ALLOWED_HEAD = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Linear,
    nn.ReLU,
    nn.Identity,
    nn.Hardswish,
)
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


@pytest.fixture(autouse=True)
def _frugal() -> None:
    torch.set_num_threads(1)


def test_required_backbones_are_registered() -> None:
    wanted = {
        "tv_resnet18",
        "tv_resnet50",
        "tv_mobilenet_v3_large",
        "tv_efficientnet_b0",
        "tv_vgg16",
        "tv_googlenet",
        "efficientnet_lite0",
    }
    assert wanted <= set(BACKBONES)
    assert B.resolve_backbone_name("resnet18") == "tv_resnet18"
    assert B.resolve_backbone_name("efficientnet_lite0") == "efficientnet_lite0"


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_regrouping_matches_the_library_forward(name: str) -> None:
    """Regrouped modules are the library's own: same logits as its forward, stages lower resolution."""
    torch.manual_seed(0)
    spec = B.backbone_spec(name)
    native, _ = B.native_model(spec, None)
    model = spec.regroup(native).eval()
    native.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = native(x)
        got = model(x)
        stages = model.forward_stages(x)
        emb = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert got.shape == (2, 1000) and emb.shape == (2, model.embedding_dim)
    sides = [t.shape[-1] for t in stages.values()]
    assert sides == sorted(sides, reverse=True) and len(set(sides)) == len(sides), sides
    assert all(isinstance(layer, ALLOWED_HEAD) for layer in model.head.pre_logits)


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_mobilenet_v3_large", "efficientnet_lite0", "tv_googlenet"])
def test_create_model_new_classes_and_gray_input(name: str) -> None:
    model = create_model(name, num_classes=7, in_chans=1, input_size=48).eval()
    assert model.arch_name == name and model.num_classes == 7
    assert model.preprocessing.color_mode == "L" and model.preprocessing.crop_size == (48, 48)
    with torch.no_grad():
        assert model(torch.randn(3, 1, 48, 48)).shape == (3, 7)


def test_preprocessing_comes_from_the_weights() -> None:
    lite = B.backbone_preprocessing("efficientnet_lite0")
    assert (lite.resize_size, lite.crop_size, lite.mean, lite.std, lite.interpolation) == (
        (256, 256),
        (224, 224),
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        "bicubic",
    )
    r50_v2 = B.backbone_preprocessing("tv_resnet50", "IMAGENET1K_V2")
    assert r50_v2.resize_size == (232, 232) and r50_v2.interpolation == "bilinear"
    assert B.backbone_preprocessing("tv_efficientnet_b0").interpolation == "bicubic"
    small = B.backbone_preprocessing("tv_resnet18", input_size=64)
    assert small.crop_size == (64, 64) and small.resize_size == (73, 73)
    assert len(B.imagenet_labels()) == 1000


# ------------------------------------------------------------------ real ImageNet weights, offline
@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return create_model("efficientnet_lite0", weights="imagenet").eval()


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


def _top5(model: nn.Module, img: Image.Image) -> list[str]:
    x = torch.from_numpy(preprocess(img, model.preprocessing))[None]
    with torch.no_grad():
        idx = model(x)[0].topk(5).indices.tolist()
    labels = B.imagenet_labels()
    return [labels[i] for i in idx]


def test_efficientnet_lite0_imagenet_classifies_photos(lite0: nn.Module) -> None:
    cat = _top5(lite0, _photo("chelsea"))
    assert cat[0] in CAT_CLASSES and len(CAT_CLASSES & set(cat)) >= 3, cat
    coffee = _top5(lite0, _photo("coffee"))
    assert coffee[0] == "espresso" and {"cup", "coffee mug"} & set(coffee), coffee
    rocket = _top5(lite0, _photo("rocket"))
    assert {"missile", "projectile", "space shuttle"} & set(rocket[:2]), rocket
    # A photo of a person in a space suit is none of these.
    assert not CAT_CLASSES & set(_top5(lite0, _photo("astronaut")))


def test_gray_input_adapts_pretrained_first_conv(lite0: nn.Module) -> None:
    """in_chans=1 sums the RGB filters: a gray photo gives the same logits as its RGB copy."""
    gray_model = create_model("efficientnet_lite0", weights="imagenet", in_chans=1).eval()
    gray = _photo("chelsea").convert("L")
    x1 = torch.from_numpy(preprocess(gray, gray_model.preprocessing))[None]
    x3 = torch.from_numpy(preprocess(gray.convert("RGB"), lite0.preprocessing))[None]
    with torch.no_grad():
        torch.testing.assert_close(gray_model(x1), lite0(x3), rtol=1e-4, atol=1e-4)


def test_local_weights_file_roundtrip(tmp_path: Path) -> None:
    """A torchvision-format state dict on disk loads strictly into the same weights."""
    torch.manual_seed(1)
    native = __import__("torchvision").models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(native.state_dict(), path)
    model = create_model("tv_resnet18", weights=str(path))
    torch.testing.assert_close(model.head.fc.weight, native.fc.weight)
    torch.testing.assert_close(model.stages["stage4"][1].conv2.weight, native.layer4[1].conv2.weight)


def test_efficientnet_lite0_package_file_in_timm_names_loads(tmp_path: Path, lite0: nn.Module) -> None:
    """The package's weights saved under timm's names load directly, giving the same model."""
    spec = B.backbone_spec("efficientnet_lite0")
    native, _ = B.native_model(spec, "imagenet")
    path = tmp_path / "lite0_timm.pth"
    torch.save(native.state_dict(), path)
    model = create_model("efficientnet_lite0", weights=str(path))
    torch.testing.assert_close(model.head.fc.weight, lite0.head.fc.weight)


# ------------------------------------------------------------------------------------- errors
def test_unknown_backbone_and_weights_names() -> None:
    with pytest.raises(StriateError, match=r"unknown architecture 'tv_resnet19'.*tv_resnet18"):
        create_model("tv_resnet19")
    with pytest.raises(StriateError, match="unknown backbone 'resnet19'"):
        B.resolve_backbone_name("resnet19")
    with pytest.raises(StriateError, match=r"unknown weights 'IMAGENET9K_V7' for tv_resnet18.*IMAGENET1K_V1"):
        create_model("tv_resnet18", weights="IMAGENET9K_V7")
    with pytest.raises(StriateError, match="unknown weights 'IMAGENET9K' for efficientnet_lite0"):
        create_model("efficientnet_lite0", weights="IMAGENET9K")
    with pytest.raises(StriateError, match="weights file not found"):
        create_model("tv_resnet18", weights="/no/such/file.pth")


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(__import__("torchvision").models.resnet18().state_dict(), path)
    with pytest.raises(StriateError) as info:
        create_model("tv_efficientnet_b0", weights=str(path))
    message = str(info.value)
    assert "does not fit tv_efficientnet_b0" in message
    assert "missing keys (features.0.0.weight" in message and "unexpected keys (conv1.weight" in message
    # The package's EfficientNet-Lite0 weights into a ResNet: refused, nothing loaded.
    with pytest.raises(StriateError, match=r"does not fit tv_resnet18.*missing keys.*unexpected keys \(_conv_stem"):
        create_model("tv_resnet18", weights=str(B.efficientnet_lite0_package_file()))
    # ResNet weights given to EfficientNet-Lite0.
    with pytest.raises(StriateError, match=r"does not fit efficientnet_lite0.*unexpected keys \(conv1.weight"):
        create_model("efficientnet_lite0", weights=str(path))


def test_same_architecture_other_shapes_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "resnet18_10.pth"
    torch.save(__import__("torchvision").models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(StriateError, match=r"2 shape mismatches .*fc.weight \(10, 512\) vs \(1000, 512\)"):
        create_model("tv_resnet18", weights=str(path))


def test_corrupt_weights_file(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save(__import__("torchvision").models.resnet18().state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(StriateError, match=r"cannot read weights file .*truncated\.pth.*tv_resnet18 state dict"):
        create_model("tv_resnet18", weights=str(truncated))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(StriateError, match="cannot read weights file"):
        create_model("efficientnet_lite0", weights=str(garbage))
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(StriateError, match="does not hold a state dict"):
        create_model("tv_resnet18", weights=str(not_a_state_dict))


def test_torchvision_enum_offline_error_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: the error names the file, the cache path and how to pass a local copy."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(StriateError) as info:
        create_model("tv_resnet18", weights="IMAGENET1K_V1")
    message = str(info.value)
    assert "cannot download tv_resnet18 weights IMAGENET1K_V1" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "weights=/path/to/resnet18-f37072fd.pth" in message
    # With the file in the hub cache, no download is attempted.
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(__import__("torchvision").models.resnet18().state_dict(), cache / "resnet18-f37072fd.pth")
    model = create_model("tv_resnet18", weights="IMAGENET1K_V1")
    assert model.num_classes == 1000


def test_imagenet_bundle_classifies_through_onnxruntime(tmp_path: Path, lite0: nn.Module) -> None:
    """`finetune --pretrained-only` then export: the bundle's top-5 equal torch's, labels included."""
    import onnxruntime as ort

    from striate.manifest import Manifest
    from training.checkpoint import save_checkpoint
    from training.export import export_checkpoint
    from training.finetune import pretrained_checkpoint

    ckpt_path = save_checkpoint(pretrained_checkpoint("efficientnet_lite0", "imagenet"), tmp_path / "lite0.pt")
    bundle = export_checkpoint(ckpt_path, "imagenet-lite0", out_root=tmp_path / "exported")
    manifest = Manifest.load(bundle)
    assert manifest.labels[281] == "tabby" and len(manifest.labels) == 1000
    assert manifest.preprocessing.mean == (0.5, 0.5, 0.5) and manifest.preprocessing.interpolation == "bicubic"
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    for name in ("chelsea", "coffee"):
        x = preprocess(_photo(name), manifest.preprocessing)[None]
        logits = sess.run([manifest.logits_output], {"image": x})[0][0]
        onnx_top5 = [manifest.labels[i] for i in np.argsort(-logits)[:5]]
        assert onnx_top5 == _top5(lite0, _photo(name)), name


def test_imagenet_bundle_served_over_http(tmp_path: Path) -> None:
    """The pretrained ImageNet classifier, exported and served by a real uvicorn: photos get sensible
    top-5 labels from a JPEG upload, and an explanation comes back with the prediction."""
    import io

    import httpx
    from service_fixtures import make_settings, run_server

    from training.checkpoint import save_checkpoint
    from training.export import export_checkpoint
    from training.finetune import pretrained_checkpoint

    ckpt_path = save_checkpoint(pretrained_checkpoint("efficientnet_lite0", "imagenet"), tmp_path / "lite0.pt")
    export_checkpoint(ckpt_path, "imagenet-lite0", out_root=tmp_path / "models")
    expected = {"chelsea": {"tabby", "tiger cat", "Egyptian cat"}, "coffee": {"espresso", "cup", "coffee mug"}}
    with run_server(make_settings(tmp_path / "models")) as url, httpx.Client(base_url=url, timeout=60) as client:
        for name, labels in expected.items():
            buf = io.BytesIO()
            _photo(name).save(buf, format="JPEG", quality=92)
            response = client.post(
                "/v1/models/imagenet-lite0/classify?top_k=5",
                content=buf.getvalue(),
                headers={"content-type": "image/jpeg"},
            )
            assert response.status_code == 200, response.text
            result = response.json()["results"][0]
            top5 = {entry["label"] for entry in result["top_k"]}
            assert result["label"] in labels and len(top5 & labels) >= 2, (name, top5)
        explained = client.post(
            "/v1/models/imagenet-lite0/explain",
            content=buf.getvalue(),
            headers={"content-type": "image/jpeg"},
        )
        assert explained.status_code == 200, explained.text
        explanation = explained.json()["results"][0]
        assert explanation["prediction"]["label"] in expected["coffee"]
        cam = np.asarray(explanation["cam"])
        assert cam.shape == (7, 7) and cam.max() == pytest.approx(1.0) and cam.min() >= 0.0


def test_weights_file_of_pickled_objects_is_refused_without_suggesting_unsafe_loading(tmp_path: Path) -> None:
    import pickle

    pickled = tmp_path / "objects.pth"
    pickled.write_bytes(pickle.dumps(Path("anything")))
    with pytest.raises(StriateError) as info:
        create_model("tv_resnet18", weights=str(pickled))
    message = str(info.value)
    assert "cannot read weights file" in message and "pickled Python objects" in message
    assert "weights_only" not in message and "\n" not in message
