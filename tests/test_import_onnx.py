"""`striate import`: foreign ONNX classifiers become bundles that classify and explain like exported ones.

Sources are torchvision and timm models exported by torch.onnx in the test (seeded random weights),
by its TorchScript exporter and by its default dynamo one (with a dynamic batch and for one image),
and an NHWC graph. The imported graphs are held to the source torch model: logits, and every
gradient method's maps against pytorch-grad-cam on the source model's layer.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from striate.cli import main
from striate.errors import StriateError
from striate.explain.methods import GRADIENT_METHODS
from striate.manifest import Manifest, Parity
from tests.import_fixtures import (
    LABELS,
    PREPROCESSING,
    SIZE,
    SOURCES,
    export,
    onnx_file,
    package_cams,
    source_input,
    source_model,
)
from tests.service_fixtures import make_settings, run_server
from training.export import images as real
from training.export.parity import parity_targets, session
from training.importer import CheckResult, import_onnx
from training.importer.api import list_tensors
from training.importer.reverse import build_head
from training.importer.tensors import probe
from training.importer.tensors import session as probe_session

TOLERANCE = 1e-4
PNG = {"content-type": "image/png"}


def _import(name: str, root, **kwargs):
    path = onnx_file(name)
    _, target = list_tensors(path, PREPROCESSING)
    return import_onnx(
        path, LABELS, PREPROCESSING, name.replace("_", "-"), out_root=root, target_tensor=target, **kwargs
    )


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """name -> its bundle, imported once per module with the self-check (gradients required)."""
    root = tmp_path_factory.mktemp("imported")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = _import(name, root, require_gradients=True, origin=f"test:{name}", architecture=name)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(SOURCES))
def test_imported_bundle_matches_the_source_model_and_pytorch_grad_cam(imported, name):
    bundle = imported(name)
    manifest = Manifest.load(bundle)
    assert manifest.explain.gradient_methods == GRADIENT_METHODS
    assert all(p.max_abs_diff <= TOLERANCE for p in manifest.explain.parity)  # the import's own check
    assert manifest.input.layout == "NCHW" and manifest.provenance.checkpoint == f"test:{name}"
    notes = next(o.description for o in manifest.outputs if o.name == "logits")
    assert ("fixed batch of 1 made dynamic" in notes) == SOURCES[name].fixed_batch
    images = real.real_batch(PREPROCESSING, 4)
    with torch.no_grad():
        expected = source_model(name)(source_input(name, images)).numpy()
    (logits,) = session(bundle / "model.onnx").run(["logits"], {"image": images})
    np.testing.assert_allclose(logits, expected, atol=TOLERANCE * max(1.0, np.abs(expected).max()), rtol=0)
    targets = parity_targets(len(images), len(LABELS))
    out = session(bundle / "explain.onnx").run(None, {"image": images, "targets": targets})
    explained, cams = out[1], dict(zip(manifest.explain.cam_outputs, out[2:], strict=True))
    order = np.argsort(-expected, axis=1, kind="stable")
    np.testing.assert_array_equal(explained[:, 0], order[:, 0])
    for method in GRADIENT_METHODS:
        reference = package_cams(name, images, method, explained)
        assert cams[method].shape == reference.shape and reference.max() > 0
        np.testing.assert_allclose(cams[method], reference, atol=TOLERANCE, rtol=0, err_msg=method)


def test_reverse_pass_of_many_head_ops_matches_autograd(tmp_path):
    """A head of many ops (pools, convs, norms, activations, a softmax inside) after the input
    itself: the hand-written backward pass equals autograd of the same forward, which equals onnxruntime."""

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2)
            self.bn = nn.BatchNorm2d(6).eval()
            self.norm = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 5)
            self.w = nn.Parameter(torch.randn(6, 6))

        def forward(self, x):
            y = nn.functional.hardsigmoid(self.bn(self.conv(nn.functional.leaky_relu(x, 0.1))))
            y = y * torch.clamp(nn.functional.avg_pool2d(x, 3, stride=2).mean(1, keepdim=True), -1, 1)
            y = torch.tanh(y).mean(dim=(2, 3)) - torch.sigmoid(y).amax(dim=(2, 3)) / 3
            y = nn.functional.silu(self.norm(y) @ self.w) * torch.softmax(y, dim=1)
            return self.fc(nn.functional.hardswish(y.reshape(y.shape[0], 2, 3).transpose(1, 2).flatten(1)))

    torch.manual_seed(0)
    head = Head().eval()
    path = export(head, tmp_path / "head.onnx", torch.zeros(2, 4, 8, 8))
    graph = _as_prepared(onnx.load(str(path)))
    values = probe(graph) | {"image": np.zeros((2, 4, 8, 8), np.float32)}  # the target here is the input
    fn = build_head(graph, values, "image", "output").double()
    a = torch.randn(3, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    seed = torch.randn(3, 5, dtype=torch.float64)
    (expected,) = torch.autograd.grad((fn(a) * seed).sum(), a)
    np.testing.assert_allclose(fn.grad(a.detach(), seed).numpy(), expected.numpy(), rtol=1e-9, atol=1e-12)
    x = np.random.default_rng(1).standard_normal((3, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ours = fn.float()(torch.from_numpy(x)).numpy()
    (ort_out,) = session(path).run(None, {"input": x})
    np.testing.assert_allclose(ours, ort_out, atol=1e-5)


def test_reverse_pass_of_gather_slice_expand_concat_matches_autograd():
    """Shape ops as foreign graphs write them: Gather with repeated and negative indices (on two axes,
    one a scalar index), Slice with a negative step and a whole-batch entry, Expand, Concat of two
    branches. Autograd of the rules' forward gives their backward; onnxruntime gives the forward."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, values):
        return numpy_helper.from_array(np.array(values, np.int64), name)

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gather", ["image", "picks"], ["g1"], axis=1),
        helper.make_node("Slice", ["g1", "starts", "ends", "axes", "steps"], ["s1"]),
        helper.make_node("ReduceMean", ["s1"], ["m1"], axes=[2], keepdims=1),
        helper.make_node("Expand", ["m1", "shape"], ["e1"]),
        helper.make_node("Mul", ["s1", "e1"], ["p1"]),
        helper.make_node("Relu", ["s1"], ["r1"]),
        helper.make_node("Concat", ["p1", "r1"], ["c1"], axis=1),
        helper.make_node("Gather", ["c1", "row"], ["g2"], axis=-2),
        helper.make_node("Flatten", ["g2"], ["f1"]),
        helper.make_node("Gemm", ["f1", "w"], ["output"]),
    ]
    weights = [
        const("picks", [3, -1, 0, 3, 3]),  # 3 three times, -1 is 3 too
        const("starts", [0, 5, 1]),
        const("ends", [2**63 - 1, -100, 6]),
        const("axes", [0, 3, -2]),
        const("steps", [1, -2, 2]),
        const("shape", [1, 5, 3, 3]),
        const("row", -2),
        numpy_helper.from_array(rng.standard_normal((30, 5)).astype(np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "shape-ops",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 5])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    values = probe(model) | {"image": np.zeros((2, 4, 6, 6), np.float32)}
    fn = build_head(model, values, "image", "output").double()
    assert [n.op_type for n in fn.nodes].count("Gather") == 2
    a = torch.randn(3, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    seed = torch.randn(3, 5, dtype=torch.float64)
    (expected,) = torch.autograd.grad((fn(a) * seed).sum(), a)
    np.testing.assert_allclose(fn.grad(a.detach(), seed).numpy(), expected.numpy(), rtol=1e-9, atol=1e-12)
    assert expected[:, 3].abs().sum() > 0 and expected[:, 1:3].abs().sum() == 0  # channels 1, 2 unread
    x = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    with torch.no_grad():
        ours = fn.float()(torch.from_numpy(x)).numpy()
    (ort_out,) = probe_session(model).run(None, {"image": x})
    np.testing.assert_allclose(ours, ort_out, atol=1e-5)


def test_indices_computed_from_the_image_values_are_refused():
    """A Gather whose indices come from the image's values (not its shape) cannot use the probe's."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("ArgMax", ["m"], ["top"], axis=1, keepdims=0),
        helper.make_node("Gather", ["m", "top"], ["picked"], axis=1),
        helper.make_node("Gemm", ["picked", "w"], ["output"]),
    ]
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    graph = helper.make_graph(
        nodes,
        "argmax-gather",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    values = probe(model) | {"image": np.zeros((2, 3, 4, 4), np.float32)}
    with pytest.raises(StriateError, match=r"Gather node .*'top' is computed from the image's values"):
        build_head(model, values, "image", "output")


def _as_prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its input renamed `image`, as prepare() leaves it (prepare() itself wants an
    RGB or grayscale image, and this head takes 4 channels)."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    old = copy.graph.input[0].name
    copy.graph.input[0].name = "image"
    for node in copy.graph.node:
        node.input[:] = ["image" if t == old else t for t in node.input]
    return copy


def test_an_op_without_backward_rule_is_refused_by_name_or_exported_gradient_free(tmp_path):
    path = onnx_file("cumsum")
    _, target = list_tensors(path, PREPROCESSING)
    with pytest.raises(StriateError, match=r"CumSum node .*no backward rule for CumSum"):
        import_onnx(
            path, LABELS, PREPROCESSING, "cumsum", out_root=tmp_path, target_tensor=target, require_gradients=True
        )
    assert not any(tmp_path.iterdir())
    bundle = import_onnx(path, LABELS, PREPROCESSING, "cumsum", out_root=tmp_path, target_tensor=target)
    manifest = Manifest.load(bundle)
    assert manifest.explain.graph is None and manifest.explain.gradient_methods == ()
    assert not (bundle / "explain.onnx").exists()
    description = next(o.description for o in manifest.outputs if o.name == manifest.explain.map_output)
    assert "gradient-free methods only" in description and "CumSum" in description


def test_a_fixed_batch_and_a_final_softmax_are_undone(tmp_path):
    """A one-image export with probabilities out: the bundle batches, and its logits are the scores
    before the softmax (the service applies softmax itself), which the gradient methods explain."""
    from tests.import_fixtures import FixedBatchSoftmax

    path = onnx_file("fixed-batch-softmax")
    _, target = list_tensors(path, PREPROCESSING)
    bundle = import_onnx(path, LABELS, PREPROCESSING, "fixed", out_root=tmp_path, target_tensor=target)
    manifest = Manifest.load(bundle)
    notes = next(o.description for o in manifest.outputs if o.name == "logits")
    assert "fixed batch of 1 made dynamic" in notes and "final Softmax is skipped" in notes
    assert manifest.explain.gradient_methods == GRADIENT_METHODS
    images = real.real_batch(PREPROCESSING, 3)
    torch.manual_seed(0)
    source = FixedBatchSoftmax().eval()
    with torch.no_grad():
        probabilities = torch.cat([source(torch.from_numpy(images[i : i + 1])) for i in range(3)]).numpy()
    (logits,) = session(bundle / "model.onnx").run(["logits"], {"image": images})
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), probabilities, atol=1e-6)
    targets = np.array([[-1], [-1], [-1]])
    explained, cam = session(bundle / "explain.onnx").run(
        ["explained", "cam_gradcam"], {"image": images, "targets": targets}
    )
    assert explained[:, 0].tolist() == probabilities.argmax(1).tolist() and cam.shape[:2] == (3, 1)


def test_a_caller_check_replaces_the_self_check_and_can_refuse(tmp_path):
    """The contract with `striate export` of a torch module: check(staging) gives the parity records,
    or raises to refuse, and then nothing is written."""
    path = onnx_file("cumsum")
    seen = []

    def refuse(staging):
        seen.append(sorted(p.name for p in staging.iterdir()))
        raise StriateError("parity with the torch module failed")

    with pytest.raises(StriateError, match="parity with the torch module failed"):
        import_onnx(path, LABELS, PREPROCESSING, "checked", out_root=tmp_path, check=refuse)
    assert seen == [["model.onnx"]] and not [p for p in tmp_path.rglob("*") if p.is_file()]
    record = Parity(images=3, max_abs_diff_logits=1e-6, max_abs_diff_embedding=2e-6, tolerance=TOLERANCE)
    bundle = import_onnx(
        path, LABELS, PREPROCESSING, "checked", out_root=tmp_path, check=lambda staging: CheckResult(record)
    )
    assert Manifest.load(bundle).provenance.parity == record


def test_imported_bundles_are_served_over_http(imported, tmp_path):
    """v1 classify and explain (a gradient method and a gradient-free one), and v2 infer."""
    from tests.service_fixtures import digits_png_bytes

    shutil.copytree(imported("torchvision-resnet18"), tmp_path / "torchvision-resnet18" / "1")
    import_onnx(onnx_file("cumsum"), LABELS, PREPROCESSING, "plain", out_root=tmp_path)
    png = digits_png_bytes(3)
    with run_server(make_settings(tmp_path)) as url, httpx.Client(base_url=url, timeout=60) as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert set(models) == {"torchvision-resnet18", "plain"}
        top = client.post("/v1/models/torchvision-resnet18/classify?top_k=3", content=png, headers=PNG)
        assert top.status_code == 200
        ranked = top.json()["results"][0]["top_k"]
        body = client.post(
            "/v1/models/torchvision-resnet18/explain?method=gradcam&top_targets=2", content=png, headers=PNG
        )
        assert body.status_code == 200, body.text
        res = body.json()["results"][0]
        assert [e["target"]["index"] for e in res["explanations"]] == [c["index"] for c in ranked[:2]]
        assert np.array(res["explanations"][0]["cam"]).shape == (2, 2)
        plain = client.post("/v1/models/plain/explain?method=occlusion", content=png, headers=PNG)
        assert plain.status_code == 200, plain.text
        refused = client.post("/v1/models/plain/explain?method=gradcam", content=png, headers=PNG)
        assert refused.status_code == 422
        x = np.zeros((1, 3, SIZE, SIZE), np.float32)
        v2 = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        out = httpx.post(f"{url}/v2/models/torchvision-resnet18/infer", json=v2 | {"outputs": [{"name": "logits"}]})
        assert out.status_code == 200 and out.json()["outputs"][0]["shape"] == [1, len(LABELS)]


def _cli(args, capsys):
    code = main(["import", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_lists_tensors_and_imports_an_nhwc_graph(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    path = onnx_file("timm-resnet18-nhwc")
    code, out, _ = _cli([path, "--list-tensors"], capsys)
    assert code == 0 and "<- suggested --target-tensor" in out and "[512, 2, 2]" in out
    repo = tmp_path / "repo"
    args = [path, "--name", "nhwc", "--labels", labels, "--preset", "imagenet", "--resize", f"{SIZE}x{SIZE}"]
    feature = "/net/layer3/layer3.1/act2/Relu_output_0"
    code, out, err = _cli([*args, "--target-tensor", "auto", "--feature-tensor", feature, "--out", repo], capsys)
    assert code == 0, err
    assert "wrote" in out and "gradcam" in out
    manifest = Manifest.load(repo / "nhwc" / "1")
    layer = manifest.layer("net.layer3.1.act2")
    assert layer is not None and layer.map_shape == (256, 4, 4) and layer.dim == 256
    assert (manifest.input.height, manifest.input.width, manifest.input.layout) == (SIZE, SIZE, "NCHW")
    assert "NHWC" in next(o.description for o in manifest.outputs if o.name == "logits")


BAD = {  # case: (arguments before the common ones, labels given, the error's telling part)
    "not-onnx": (lambda tmp: [tmp / "labels.txt"], 10, "is not an ONNX model"),
    "no-image-input": (lambda tmp: [onnx_file("not-an-image"), "--size", "8"], 10, "4-D float32 image input"),
    "labels": (lambda tmp: [onnx_file("cumsum")], 3, "3 labels for a graph with 10 logits"),
    "target": (
        lambda tmp: [onnx_file("cumsum"), "--target-tensor", "/body/body.1/Reluu"],
        10,
        "not in the graph; close",
    ),
    "op": (lambda tmp: [onnx_file("cumsum"), "--target-tensor", "auto", "--require-gradients"], 10, "no backward rule"),
    "unbatchable": (lambda tmp: [onnx_file("fixed-batch-flat")], 10, "does not run a batch of 2 images"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capfd, case):
    """One line on stderr, whatever wrote it (capfd: onnxruntime's own log goes to the file descriptor)."""
    make_args, count, expected = BAD[case]
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS[:count]) + "\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    args = [*make_args(tmp_path), "--name", "m", "--labels", labels, "--preset", "imagenet", "--out", repo]
    code, out, err = _cli(args, capfd)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert list(repo.rglob("*")) == []


def test_manifest_records_origin_and_self_check(imported):
    manifest = json.loads((imported("timm-convnext_atto") / "manifest.json").read_text())
    assert manifest["architecture"] == "timm-convnext_atto"
    assert manifest["provenance"]["checkpoint"] == "test:timm-convnext_atto"
    parity = manifest["provenance"]["parity"]
    assert parity["images"] == 8 and parity["max_abs_diff_logits"] <= TOLERANCE
    assert parity["max_abs_diff_cam"] <= TOLERANCE
    assert parity["reference"].startswith("the source ONNX graph")  # no torch model was at hand
    assert [layer["name"] for layer in manifest["layers"]] == ["embedding", "stages.3.blocks.1"]
    assert manifest["explain"]["target_layer"] == "stages.3.blocks.1"


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("torchvision-resnet18", "layer4.1.relu_1"),  # TorchScript: from the tensor's scoped name
        ("torchvision-resnet18-dynamo", "layer4.1.relu"),  # dynamo: from the node's module path
        ("timm-convnext_atto-dynamo", "stages.3.blocks.1"),
    ],
)
def test_layer_names_are_the_torch_module_paths(imported, name, layer):
    manifest = Manifest.load(imported(name))
    assert manifest.explain.target_layer == layer and manifest.layers[-1].name == layer


def test_striate_analyze_reads_an_imported_bundle(tmp_path, capsys):
    """`striate analyze` takes an imported bundle like an exported one: gallery (a gradient and a
    gradient-free method, scored) and separability of the imported target layer."""
    path = onnx_file("torchvision-resnet18")
    _, target = list_tensors(path, PREPROCESSING)
    digits = [str(d) for d in range(10)]
    bundle = import_onnx(path, digits, PREPROCESSING, "imported", out_root=tmp_path, target_tensor=target)
    out = tmp_path / "analysis"
    common = ["--data", "digits", "--out", out]
    gallery = ["gallery", bundle, "--methods", "gradcam,scorecam", "--correct", "1", "--wrong", "1", *common]
    assert main(["analyze", *map(str, gallery), "--samples", "20"]) == 0
    scores = json.loads((out / "faithfulness.json").read_text())["methods"]
    assert {"gradcam", "scorecam"} <= set(scores) and np.isfinite(scores["gradcam"]["road"]), scores
    assert main(["analyze", "separability", str(bundle), "--samples", "40", *map(str, common)]) == 0
    layers = {row["layer"] for row in csv.DictReader((out / "separability.csv").open())}
    assert any(layer.startswith("layer4.1.relu_1") for layer in layers), layers
    capsys.readouterr()
