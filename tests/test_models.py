"""The zoo, driven by the registry: every registered zoo model builds, runs forward and backward,
exposes the StriateModel interface and lowers resolution / raises channels stage by stage."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

from striate.cli import main as cli_main
from striate.errors import StriateError
from training.models import StriateModel, create_model, list_models, model_entry, register_model

ZOO = list_models(family="zoo")
EXPECTED_ZOO = {
    "lenet5", "alexnet", "vgg11", "vgg16", "googlenet", "resnet18", "resnet34", "resnet50",
    "xception", "se_resnet18", "se_resnet50",
}  # fmt: skip
STAGES = {
    "lenet5": ["c1", "c3", "c5"],
    "alexnet": ["conv1", "conv2", "conv3_5"],
    "vgg11": ["conv1", "conv2", "conv3", "conv4", "conv5"],
    "googlenet": ["inception3", "inception4", "inception5"],
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
    "xception": ["entry1", "entry2", "entry3", "middle", "exit"],
}
# Narrow builds keep the CPU tests fast; the architecture (depth, stages, sizing) is unchanged.
SMALL_WIDTH = {"lenet5": 6, "googlenet": 8, "xception": 4}
HEAD_MODULES = (
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Linear, nn.ReLU, nn.Identity
)  # fmt: skip
NUM_CLASSES = 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these models are tiny, and the machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, in_chans: int, size: int | tuple[int, int], **kw) -> StriateModel:
    torch.manual_seed(0)
    kw.setdefault("base_width", SMALL_WIDTH.get(name, 8))
    return create_model(name, num_classes=NUM_CLASSES, in_chans=in_chans, input_size=size, **kw)


def test_registry_holds_the_zoo():
    assert set(ZOO) == EXPECTED_ZOO


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize(("in_chans", "size"), [(1, 8), (1, 32), (3, 64)])
def test_forward_backward(name: str, in_chans: int, size: int):
    model = build(name, in_chans, size).train()
    x = torch.randn(2, in_chans, size, size)
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.stem.parameters()) or not list(model.stem.parameters())


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize(("in_chans", "size"), [(1, 8), (1, 32), (3, 64)])
def test_interface_and_stage_geometry(name: str, in_chans: int, size: int):
    model = build(name, in_chans, size).eval()
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        stages = model.forward_stages(x)
        features = model.forward_features(x)
        embedding = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
        full = model(x)
    assert list(stages) == model.stage_names and len(stages) >= 3
    torch.testing.assert_close(features, list(stages.values())[-1])
    assert embedding.shape == (2, model.head.fc.in_features) == (2, model.embedding_dim)
    torch.testing.assert_close(logits, full)
    torch.testing.assert_close(model.head.fc(embedding), full)

    shapes = [tuple(t.shape[1:]) for t in stages.values()]  # (C, H, W)
    for (c0, h0, w0), (c1, h1, w1) in itertools.pairwise(shapes):
        assert h1 <= h0 and w1 <= w0, f"{name}: resolution grew {shapes}"
        assert c1 >= c0, f"{name}: channels shrank {shapes}"
    (c_first, h_first, _), (c_last, h_last, w_last) = shapes[0], shapes[-1]
    assert c_last > c_first, shapes
    assert h_last < size, shapes
    if size >= 32:
        assert h_last < h_first, f"{name}: no stage lowered the resolution {shapes}"
    assert min(h_last, w_last) >= 1
    if name != "lenet5":  # LeNet's C5 is a 1x1 "fully connected" conv by design
        assert min(h_last, w_last) >= 2, f"{name}: last map {h_last}x{w_last} too small for Grad-CAM"


@pytest.mark.parametrize("name", ZOO)
def test_head_uses_only_exportable_modules(name: str):
    model = build(name, 1, 16)
    for module in model.head.pre_logits:
        assert isinstance(module, HEAD_MODULES), f"{name}: {type(module).__name__} in pre_logits"
    assert isinstance(model.head.fc, nn.Linear)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_names(name: str):
    assert build(name, 3, 32).stage_names == STAGES[name]


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "googlenet", "lenet5"])
def test_non_square_input(name: str):
    model = build(name, 3, (24, 40)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 24, 40)).shape == (1, NUM_CLASSES)


def test_small_input_adapts_the_stem():
    big, small = build("resnet18", 3, 224), build("resnet18", 3, 32)
    assert big.stem.conv1.conv.kernel_size == (7, 7) and hasattr(big.stem, "pool")
    assert small.stem.conv1.conv.stride == (1, 1) and not hasattr(small.stem, "pool")
    with torch.no_grad():
        sizes = [t.shape[-1] for t in small.eval().forward_stages(torch.randn(1, 3, 32, 32)).values()]
    assert sizes == [32, 16, 8, 4]


def test_default_digits_model_fits_the_budget():
    """The embedded default (resnet18, base_width 16, 1x32x32, 10 classes) must stay < 5 MB."""
    model = create_model("resnet18", num_classes=10, in_chans=1, input_size=32, base_width=16)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert size < 4_000_000
    with torch.no_grad():
        shapes = [tuple(t.shape[1:]) for t in model.eval().forward_stages(torch.randn(1, 1, 32, 32)).values()]
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]


def test_rebuild_from_recorded_kwargs():
    model = create_model("se_resnet18", num_classes=3, in_chans=1, input_size=(16, 16), base_width=8)
    assert model.arch_name == "se_resnet18"
    again = create_model(model.arch_name, **model.arch_kwargs)
    again.load_state_dict(model.state_dict(), strict=True)


def test_lenet5_learns_digits():
    """A real check that a zoo model trains: LeNet-5 on 300 digits, loss must fall well below chance."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:300], dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.tensor(digits.target[:300])
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=10, in_chans=1, input_size=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert loss.item() < 0.5 and acc > 0.9, (loss.item(), acc)


def test_duplicate_registration_refused():
    def resnet18(**kwargs):  # same name as the zoo's
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet18)
    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet18, name="vgg16")


def test_unknown_name_suggests():
    with pytest.raises(StriateError, match="resnet18"):
        create_model("resnet19")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": "big"}, "input_size"),
        ({"input_size": (0, 32)}, "input_size"),
        ({"num_classes": 0}, "num_classes"),
        ({"in_chans": 0}, "in_chans"),
        ({"global_pool": "median"}, "global_pool"),
    ],
)
def test_bad_arguments_raise_striate_error(kwargs: dict, match: str):
    with pytest.raises(StriateError, match=match):
        create_model("resnet18", **kwargs)


def test_bad_head_raises():
    with pytest.raises(StriateError, match="head"):
        create_model("vgg11", base_width=8, head="fancy")
    with pytest.raises(StriateError, match="7x7 final map"):  # paper head needs the paper's input size
        create_model("vgg11", base_width=8, input_size=64, head="paper")


@pytest.mark.parametrize("name", ZOO)
def test_exports_to_onnx(name: str, tmp_path):
    """Every zoo model goes through the legacy exporter (as training.export uses) and matches in ORT."""
    import onnxruntime as ort

    model = build(name, 1, 32).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model, (torch.randn(2, 1, 32, 32),), str(path), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "n"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    x = torch.randn(3, 1, 32, 32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"image": x.numpy()})[0]
    assert got.shape == (3, NUM_CLASSES)
    assert abs(got - expected).max() <= 1e-4 * max(1.0, abs(expected).max())


# Published parameter counts at 224 px / 1000 classes (3 channels); meta-device builds are instant.
PAPER_PARAMS = {
    "resnet18": ({}, 11_689_512),  # torchvision resnet18 (paper: 11.7M)
    "resnet34": ({}, 21_797_672),  # torchvision resnet34 (paper: 21.8M)
    "resnet50": ({}, 25_557_032),  # torchvision resnet50 (paper: 25.6M)
    "se_resnet50": ({}, 28_088_024),  # timm seresnet50 (paper: 28.1M)
    "xception": ({}, 22_855_952),  # timm legacy_xception (paper: 22.8M)
    # torchvision vgg16_bn is 138,365,992; we drop the 4,224 conv biases that BN makes redundant.
    "vgg16": ({"head": "paper"}, 138_365_992 - 4_224),
    "vgg11": ({"head": "paper"}, 132_868_840 - 2_752),  # torchvision vgg11_bn - conv biases
    # torchvision alexnet 61,100,840 + BN (2 * 1,152) - conv biases (1,152).
    "alexnet": ({"head": "paper"}, 61_100_840 + 1_152),
    "lenet5": ({"norm_layer": None, "num_classes": 10, "in_chans": 1, "input_size": 32}, 61_706),  # LeCun 1998
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_parameter_counts(name: str):
    kwargs, expected = PAPER_PARAMS[name]
    kwargs = {"num_classes": 1000, "in_chans": 3, "input_size": 224, **kwargs}
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_googlenet_parameter_count_near_paper():
    # Paper (table 1, no BN, true 5x5 branches) ~6.8M; torchvision (3x3 in the 5x5 branch) 6.6M.
    with torch.device("meta"):
        model = create_model("googlenet", norm_layer=None)
    assert 6.7e6 < sum(p.numel() for p in model.parameters()) < 7.1e6


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_paper_width_forward_at_224(name: str):
    kwargs = {"head": "paper"} if name in ("alexnet", "vgg11", "vgg16") else {}
    model = create_model(name, num_classes=1000, in_chans=3, input_size=224, **kwargs).eval()
    with torch.no_grad():
        stages = model.forward_stages(torch.randn(1, 3, 224, 224))
        logits = model.forward_head(list(stages.values())[-1])
    assert logits.shape == (1, 1000)
    last = list(stages.values())[-1]
    expected_last = {"lenet5": 49, "alexnet": 6}.get(name, 7)  # the paper's final maps at 224 px
    assert last.shape[-1] == expected_last


def test_cli_models_lists_the_zoo(capsys: pytest.CaptureFixture[str]):
    assert cli_main(["models", "--family", "zoo", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in table["models"]}
    assert set(rows) == EXPECTED_ZOO
    assert rows["resnet18"]["params"] == 11_689_512 and rows["resnet18"]["family"] == "zoo"
    assert all(row["summary"] for row in rows.values())
    assert cli_main(["models", "--family", "zoo"]) == 0
    text = capsys.readouterr().out
    assert "resnet50" in text and "25.56M" in text


@pytest.mark.parametrize("name", list_models(family="zoo"))
def test_builders_take_their_defaults_from_the_class(name: str):
    """Each default is stated once, in the architecture's class: a builder shows and uses those."""
    import inspect

    builder_params = inspect.signature(model_entry(name).builder).parameters
    model = create_model(name, input_size=32, base_width=4 if name != "lenet5" else 6)
    class_params = inspect.signature(type(model).__init__).parameters
    shared = [p for p in builder_params if p in class_params]
    assert {"num_classes", "in_chans", "input_size", "base_width", "drop_rate"} <= set(shared)
    for param in shared:
        assert builder_params[param].default == class_params[param].default, param
    assert model.head.fc.out_features == class_params["num_classes"].default
