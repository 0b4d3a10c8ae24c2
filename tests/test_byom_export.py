"""Bring your own model: any PyTorch classifier exported, checked, and served over real HTTP.

torchvision's resnet18 (CLI, a local weights file) and mobilenet_v3_small (Python API through
`export_model`), a timm model (CLI, timm's pretrained_cfg and class names), a module defined here
(`export_classifier`) and one built by `package.module:factory` are exported at small sizes, then
classified and explained by a real uvicorn server; the served scores and maps are compared with
the torch module itself and with pytorch-grad-cam on it.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from service_fixtures import make_settings, run_server
from torch import nn

from striate.cli import main as cli
from striate.errors import StriateError
from striate.explain.methods import GRADIENT_METHODS
from striate.manifest import Manifest, Preprocessing
from striate.preprocess import preprocess
from training.byom import export_classifier
from training.byom.specs import is_model_spec
from training.explain.reference import package_cams
from training.export import export_model
from training.export.images import real_images

PNG = {"content-type": "image/png"}
SMALL = Preprocessing(
    color_mode="RGB", resize_mode="exact", resize_size=(32, 32), crop_size=(32, 32), mean=(0.5,) * 3, std=(0.25,) * 3
)
# torchvision's and timm's ImageNet nets downsample by 32: 64x64 inputs give 2x2 maps to explain.
SMALL64 = SMALL.model_copy(update={"resize_size": (64, 64), "crop_size": (64, 64)})
FACTORY = '''
import torch
from torch import nn


class Net(nn.Module):
    """A user's own classifier: two convs, max-pooled and average-pooled, two linear layers."""

    def __init__(self, classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU())
        self.hidden = nn.Linear(12, 16)
        self.out = nn.Linear(16, classes)

    def forward(self, x):
        x = self.body(x).mean(dim=(2, 3))
        return self.out(torch.relu(self.hidden(x)))


def build(classes=3, seed=0):
    torch.manual_seed(seed)
    return Net(classes)
'''


class UserNet(nn.Module):
    """A classifier written without any Striate interface: features, then a plain head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        )
        self.act = nn.Hardswish()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.features(x)))


class CumsumHead(UserNet):
    """A head with an op (a cumulative sum over channels) the importer cannot differentiate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.act(self.features(x)).mean(dim=(2, 3))
        return self.head[-1](torch.cumsum(pooled, dim=1))


class MapOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def seeded(build, seed: int) -> nn.Module:
    """`build()` with its own initialisation drawn from `seed`, in eval mode."""
    torch.manual_seed(seed)
    return build().eval()


def png(img: Image.Image, size: int = 48) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").resize((size, size)).save(buf, format="PNG")
    return buf.getvalue()


def write_labels(path: Path, n: int) -> Path:
    path.write_text("".join(f"kind {i}\n" for i in range(n)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def factory_package(tmp_path_factory):
    root = tmp_path_factory.mktemp("userpkg")
    (root / "user_models.py").write_text(textwrap.dedent(FACTORY), encoding="utf-8")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("user_models", None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, factory_package):
    """{name: (bundle dir, torch module)}: every model of this file exported into one repository."""
    root = tmp_path_factory.mktemp("byom-models")
    work = tmp_path_factory.mktemp("byom-files")
    out: dict[str, tuple[Path, nn.Module]] = {}

    resnet = seeded(lambda: torchvision.models.resnet18(num_classes=5), 1)
    torch.save(resnet.state_dict(), work / "resnet18.pth")
    args = ["export", "torchvision:resnet18", "--name", "resnet", "--out", str(root)]
    args += ["--weights", str(work / "resnet18.pth"), "--kwargs", '{"num_classes": 5}', "--size", "64"]
    args += ["--labels", str(write_labels(work / "labels.txt", 5))]
    assert cli(args) == 0
    out["resnet"] = (root / "resnet" / "1", resnet)

    mobilenet = seeded(lambda: torchvision.models.mobilenet_v3_small(num_classes=4), 2)
    path = export_model(mobilenet, [f"m{i}" for i in range(4)], SMALL64, "mobilenet", out_root=root)
    out["mobilenet"] = (path, mobilenet)

    import timm

    tm = seeded(lambda: timm.create_model("resnet10t", pretrained=False), 3)
    from safetensors.torch import save_file

    save_file(tm.state_dict(), str(work / "resnet10t.safetensors"))
    args = ["export", "timm:resnet10t", "--name", "timmnet", "--out", str(root), "--size", "64"]
    assert cli([*args, "--weights", str(work / "resnet10t.safetensors")]) == 0
    out["timmnet"] = (root / "timmnet" / "1", tm)

    user = seeded(UserNet, 4)
    out["user"] = (export_classifier(user, ["a", "b", "c", "d"], SMALL, "user", out_root=root), user)

    # As the README writes it: one --mean/--std value for every channel, labels as a JSON list.
    (work / "three.json").write_text(json.dumps(["zero", "one", "two"]))
    args = ["export", "user_models:build", "--name", "factory", "--out", str(root), "--size", "24", "--kwargs"]
    args += ['{"classes": 3, "seed": 5}', "--labels", str(work / "three.json"), "--mean", "0.5", "--std", "0.25"]
    assert cli(args) == 0
    import user_models

    out["factory"] = (root / "factory" / "1", user_models.build(3, 5).eval())
    return root, out


@pytest.fixture(scope="module")
def client(exported):
    root, _ = exported
    with run_server(make_settings(root)) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


MODELS = ("resnet", "mobilenet", "timmnet", "user", "factory")


@pytest.mark.parametrize("name", MODELS)
def test_exported_model_classifies_like_the_torch_module_over_http(exported, client, name):
    bundle, module = exported[1][name]
    manifest = Manifest.load(bundle)
    photo = real_images(1)[0]
    data = png(photo)
    r = client.post(f"/v1/models/{name}/classify?top_k={len(manifest.labels)}", content=data, headers=PNG)
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]["top_k"]
    x = torch.from_numpy(preprocess(Image.open(io.BytesIO(data)), manifest.preprocessing)[None])
    with torch.no_grad():
        probs = torch.softmax(module(x), dim=1)[0].numpy()
    assert [t["index"] for t in top] == list(np.argsort(-probs, kind="stable"))
    np.testing.assert_allclose([t["probability"] for t in top], np.sort(probs)[::-1], atol=1e-5)
    assert [t["label"] for t in top] == [manifest.labels[t["index"]] for t in top]


@pytest.mark.parametrize("name", MODELS)
def test_exported_model_explains_like_pytorch_grad_cam_over_http(exported, client, name):
    bundle, module = exported[1][name]
    manifest = Manifest.load(bundle)
    assert manifest.explain is not None and manifest.explain.gradient_methods == (
        "gradcam",
        "gradcampp",
        "xgradcam",
        "hirescam",
        "layercam",
    )
    assert all(p.passed for p in manifest.explain.parity)
    data = png(real_images(3)[2])
    for method in ("gradcam", "layercam"):
        r = client.post(f"/v1/models/{name}/explain?method={method}&targets=1,0", content=data, headers=PNG)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["target_layer"] == manifest.explain.target_layer
        served = np.array([e["cam"] for e in body["results"][0]["explanations"]])
        x = torch.from_numpy(preprocess(Image.open(io.BytesIO(data)), manifest.preprocessing)[None])
        layer = module.get_submodule(manifest.explain.target_layer)
        expected = package_cams(module, x, method, np.array([[1, 0]]), layer)[0]
        np.testing.assert_allclose(served, expected, atol=1e-4)
    r = client.post(f"/v1/models/{name}/explain?method=occlusion", content=data, headers=PNG)
    assert r.status_code == 200, r.text


def test_layers_keep_their_module_paths_over_v1_features_and_v2(exported, client):
    """The user's layer names are the API's: features of `act` and the v2 output `act_map` are the module's."""
    bundle, module = exported[1]["user"]
    manifest = Manifest.load(bundle)
    data = png(real_images(5)[4])
    x = preprocess(Image.open(io.BytesIO(data)), manifest.preprocessing)[None]
    kept = []
    handle = module.act.register_forward_hook(lambda m, a, out: kept.append(out))
    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    handle.remove()
    act = kept[0].numpy()
    features = client.post("/v1/models/user/features?layer=act", content=data, headers=PNG).json()
    np.testing.assert_allclose(features["features"][0], act.mean(axis=(2, 3))[0], atol=1e-5)
    body = {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
        "outputs": [{"name": "logits"}, {"name": "act_map"}],
    }
    outs = {o["name"]: o for o in client.post("/v2/models/user/infer", json=body).json()["outputs"]}
    np.testing.assert_allclose(np.reshape(outs["logits"]["data"], outs["logits"]["shape"]), logits, atol=1e-5)
    np.testing.assert_allclose(np.reshape(outs["act_map"]["data"], outs["act_map"]["shape"]), act, atol=1e-5)


def test_default_target_layers_are_the_last_conv_stages(exported):
    chosen = {name: Manifest.load(bundle).explain.target_layer for name, (bundle, _) in exported[1].items()}
    assert chosen == {
        "resnet": "layer4",
        "mobilenet": "features",
        "timmnet": "layer4",
        "user": "act",
        "factory": "body",
    }


def test_metadata_says_where_weights_labels_and_preprocessing_came_from(exported):
    resnet = Manifest.load(exported[1]["resnet"][0])
    # torchvision's ResNet18_Weights.DEFAULT transform (resize 256, crop 224) scaled to a 64 crop.
    assert resnet.preprocessing.crop_size == (64, 64) and resnet.preprocessing.resize_size == (73, 73)
    assert resnet.preprocessing.resize_mode == "shorter" and resnet.labels == tuple(f"kind {i}" for i in range(5))
    timmnet = Manifest.load(exported[1]["timmnet"][0])
    assert timmnet.labels[:2] == ("tench", "goldfish") and len(timmnet.labels) == 1000
    assert timmnet.preprocessing.interpolation == "bicubic"  # resnet10t's pretrained_cfg
    factory = Manifest.load(exported[1]["factory"][0])
    assert factory.labels == ("zero", "one", "two")
    assert factory.preprocessing.mean == (0.5,) * 3 and factory.preprocessing.std == (0.25,) * 3


def test_torchvision_enum_gives_labels_and_transforms_with_a_local_file(tmp_path, capsys):
    model = seeded(torchvision.models.squeezenet1_1, 6)
    torch.save(model.state_dict(), tmp_path / "squeeze.pth")
    args = ["export", "torchvision:squeezenet1_1", "--name", "squeeze", "--out", str(tmp_path / "repo")]
    args += ["--weights", str(tmp_path / "squeeze.pth"), "--pretrained", "SqueezeNet1_1_Weights.IMAGENET1K_V1"]
    assert cli([*args, "--size", "48"]) == 0
    printed = capsys.readouterr().out
    assert 'SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["categories"]' in printed
    manifest = Manifest.load(tmp_path / "repo" / "squeeze" / "1")
    assert manifest.labels == tuple(torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["categories"])
    assert manifest.preprocessing.mean == (0.485, 0.456, 0.406) and manifest.preprocessing.crop_size == (48, 48)
    digest = hashlib.sha256((tmp_path / "squeeze.pth").read_bytes()).hexdigest()
    assert manifest.provenance.data == f"weights: {(tmp_path / 'squeeze.pth').as_posix()} (sha256 {digest})"


def test_weights_enum_takes_its_file_from_the_hub_cache_and_never_downloads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    enum = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    cached = tmp_path / "torch" / "hub" / "checkpoints" / enum.url.rsplit("/", 1)[-1]
    args = ["export", "torchvision:squeezenet1_1", "--weights", "SqueezeNet1_1_Weights.IMAGENET1K_V1", "--size", "32"]
    assert cli([*args, "--name", "sq", "--out", str(tmp_path / "repo")]) == 2
    assert f"put {cached.name} at {cached}" in capsys.readouterr().err
    cached.parent.mkdir(parents=True)
    torch.save(seeded(torchvision.models.squeezenet1_1, 8).state_dict(), cached)
    assert cli([*args, "--name", "sq", "--out", str(tmp_path / "repo")]) == 0
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    said = capsys.readouterr().out
    assert f"weights from {cached.as_posix()} (sha256 {digest}), 1000 labels from SqueezeNet1_1_Weights" in said


def test_not_a_classifier_is_refused_in_one_line(tmp_path):
    with pytest.raises(StriateError) as info:
        export_classifier(MapOut(), ["a"], SMALL, "maps", out_root=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "MapOut is not an image classifier: it returns a tensor of shape [2, 4, 30, 30] for a batch of 2 "
        "images, not [N, K] class scores"
    )
    assert not (tmp_path / "maps").exists()


class Noisy(UserNet):
    """Answers differently on every call: no exported graph can match it."""

    def forward(self, x):
        logits = super().forward(x)
        return logits + 0.1 * torch.randn_like(logits)


def test_a_failed_parity_check_leaves_nothing_in_the_repository(tmp_path):
    with pytest.raises(StriateError, match="parity check failed"):
        export_classifier(seeded(Noisy, 8), list("abcd"), SMALL, "noisy", out_root=tmp_path)
    assert not list(tmp_path.iterdir())  # not even an empty model folder


def test_probabilities_are_refused_with_the_way_out(tmp_path):
    module = nn.Sequential(UserNet(), nn.Softmax(dim=1))
    with pytest.raises(
        StriateError, match=r"Sequential returns probabilities \(each row sums to 1\): export it without"
    ):
        export_classifier(module, list("abcd"), SMALL, "probs", out_root=tmp_path)


def test_labels_must_match_the_logits_and_layers_must_exist(tmp_path):
    with pytest.raises(StriateError, match="3 labels for a model with 4 classes"):
        export_classifier(UserNet(), ["a", "b", "c"], SMALL, "user", out_root=tmp_path)
    with pytest.raises(StriateError, match=r"'feature' is not a module of UserNet; did you mean features"):
        export_classifier(UserNet(), list("abcd"), SMALL, "user", out_root=tmp_path, target_layer="feature")
    with pytest.raises(StriateError, match=r"'head.3' returns \[2, 4\], not a \[N, C, h, w\] feature map"):
        export_classifier(UserNet(), list("abcd"), SMALL, "user", out_root=tmp_path, stages=["head.3"])
    assert not (tmp_path / "user").exists()


def test_head_that_cannot_be_differentiated_exports_gradient_free(tmp_path):
    module = seeded(CumsumHead, 7)
    path = export_classifier(module, list("abcd"), SMALL, "cumsum", out_root=tmp_path)
    manifest = Manifest.load(path)
    assert manifest.explain is not None and manifest.explain.graph is None
    assert manifest.explain.gradient_methods == () and manifest.explain.target_layer == "act"
    assert not (path / "explain.onnx").exists()
    said = " ".join(o.description for o in manifest.outputs)
    assert "gradient-free methods only" in said and "CumSum" in said
    assert manifest.provenance.parity.max_abs_diff_logits <= 1e-4
    assert manifest.provenance.parity.reference == "the torch model"  # byom checks against the module itself
    with run_server(make_settings(tmp_path)) as url, httpx.Client(base_url=url, timeout=60) as c:
        data = png(real_images(1)[0])
        assert c.post("/v1/models/cumsum/explain?method=scorecam", content=data, headers=PNG).status_code == 200
        r = c.post("/v1/models/cumsum/explain?method=gradcam", content=data, headers=PNG)
        assert r.status_code == 422 and "no gradient graph" in r.json()["error"]["message"]
        assert "cannot differentiate CumSum node" in r.json()["error"]["message"]
        explain = c.get("/v1/models/cumsum").json()["explain"]
        assert [m["name"] for m in explain["unavailable"]] == list(GRADIENT_METHODS)
        assert all("cannot differentiate CumSum node" in m["why"] for m in explain["unavailable"])
        assert {m["name"]: m["per_class"] for m in explain["methods"]}["eigencam"] is False
    assert "cannot differentiate CumSum node" in (manifest.explain.no_gradients or "")
    with pytest.raises(StriateError, match="CumSum"):
        export_classifier(module, list("abcd"), SMALL, "cumsum", out_root=tmp_path, require_gradients=True)


class Payload:
    def __reduce__(self):
        return (Path.write_text, (Path(PAYLOAD_MARK), "the payload ran"))


PAYLOAD_MARK = ""


def test_weights_are_loaded_safely(tmp_path, capsys):
    global PAYLOAD_MARK
    PAYLOAD_MARK = str(tmp_path / "pwned")
    evil = tmp_path / "evil.pth"
    state = dict(torchvision.models.resnet18().state_dict())
    state["extra"] = Payload()
    torch.save(state, evil)
    code = cli(["export", "torchvision:resnet18", "--name", "evil", "--out", str(tmp_path), "--weights", str(evil)])
    err = capsys.readouterr().err
    assert code == 2 and "pickled Python objects, which Striate never loads" in err
    assert not Path(PAYLOAD_MARK).exists() and not (tmp_path / "evil").exists()
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    assert (
        cli(["export", "torchvision:resnet18", "--name", "wrong", "--out", str(tmp_path), "--weights", str(wrong)]) == 2
    )
    assert "1 unexpected keys (conv.weight)" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    cases = [
        (
            ["torchvision:resnet81", "--random-init"],
            "unknown torchvision classification model 'resnet81'; did you mean",
        ),
        (["timm:resnet18", "--pretrained", "ResNet18_Weights.IMAGENET1K_V1"], "--pretrained names torchvision weights"),
        (["torchvision:resnet18"], "no weights for torchvision:resnet18"),
        (["no_such_module:build", "--size", "8"], "cannot import 'no_such_module'"),
        (
            ["torchvision:resnet18", "--pretrained", "ResNet50_Weights.IMAGENET1K_V1"],
            "are not weights of torchvision's",
        ),
        (["torchvision:resnet18", "--random-init", "--kwargs", "{num_classes: 3}"], "--kwargs is not valid JSON"),
        (["torchvision:resnet18", "--random-init", "--kwargs", "[3]"], "--kwargs must be a JSON object"),
    ]
    for extra, message in cases:
        assert cli(["export", *extra, "--name", "x", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_model_specs_and_checkpoint_paths_are_told_apart(tmp_path):
    assert is_model_spec("torchvision:resnet18") and is_model_spec("timm:resnet18.a1_in1k")
    assert is_model_spec("my_pkg.models:build")
    assert not is_model_spec("runs/x/best.pt") and not is_model_spec("best.pt") and not is_model_spec("C:model")
    odd = tmp_path / "a:b"
    odd.write_bytes(b"")
    assert not is_model_spec(str(odd))


def test_export_model_takes_a_plain_torchvision_module(tmp_path):
    """The issue's first line: export_model(torchvision.models.resnet18(), ...) used to raise AttributeError."""
    labels = [f"c{i}" for i in range(1000)]
    path = export_model(torchvision.models.resnet18(), labels, SMALL, "plain", out_root=tmp_path)
    manifest = Manifest.load(path)
    assert manifest.architecture == "ResNet" and manifest.explain.target_layer == "layer4"
    assert json.loads((path / "manifest.json").read_text())["labels"][:2] == ["c0", "c1"]
