"""Seeing inside the CNN: report, separability, specialization, activations, gallery, CLI.

Numbers are checked on cases built to have a known answer (features that ARE the labels,
random features, a neuron equal to the class indicator, an ONNX model whose logit is the mean of
a known region); figures are checked to be real PNGs of the documented pixel size.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from striate.cli import main
from striate.errors import StriateError
from striate.manifest import Preprocessing
from striate.preprocess import preprocess
from training.analysis import gallery
from training.analysis.activations import plot_activation_grid
from training.analysis.extract import OnnxFeatureModel, onnx_classifier, open_model, softmax
from training.analysis.report import write_report
from training.analysis.samples import load_sample
from training.analysis.separability import layer_separability, merge_identical, run_separability
from training.analysis.specialization import class_auc, class_fisher, neuron_dissimilarity, run_specialization
from training.checkpoint import Checkpoint, save_checkpoint
from training.config import TrainConfig
from training.data import load_digits_source, stratified_split
from training.export import export_model
from training.models import create_model

SIZE = 16
LABELS = [str(i) for i in range(10)]
ARCH_KWARGS = {"num_classes": 10, "in_chans": 1, "input_size": SIZE, "base_width": 4}
SPEC = Preprocessing(color_mode="L", resize_size=(SIZE, SIZE), crop_size=(SIZE, SIZE), mean=(0.3,), std=(0.3,))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a file Pillow can fully decode as a PNG."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return img.size


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for torch, BLAS and OpenMP: on a shared 2-core machine this is many times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# A small resnet18 trained for a few seconds on the digits training split: a real model whose
# later layers separate classes, with a few mistakes left for the gallery.


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    config = TrainConfig(arch="resnet18", data="digits", input_size=SIZE, base_width=4, epochs=1)
    source = load_digits_source()
    split = stratified_split(source.targets, config.val_fraction, config.test_fraction, config.data_seed)
    x = torch.from_numpy(np.stack([preprocess(source.image(int(i)), SPEC) for i in split.train]))
    y = torch.from_numpy(source.targets[split.train])
    model = create_model("resnet18", **ARCH_KWARGS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        idx = torch.randint(0, len(y), (128,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ckpt = Checkpoint(
        arch="resnet18",
        arch_kwargs=ARCH_KWARGS,
        state_dict=model.state_dict(),
        labels=LABELS,
        preprocessing=SPEC,
        config=config.to_dict(),
        data="digits",
        versions={"torch": str(torch.__version__)},
    )
    path = save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    return model, path


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = trained
    return export_model(model, LABELS, SPEC, "tiny-digits", out_root=tmp_path_factory.mktemp("exported"), data="digits")


# --------------------------------------------------------------------------------------------
# Training report


def _write_run(run: Path, with_metrics: bool = True) -> None:
    history = [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_acc": 1 - 1 / (e + 1),
            "val_loss": 2.2 / e,
            "val_acc": 1 - 1.2 / (e + 1),
            "lr": 0.01,
            "seconds": 1.5,
        }
        for e in range(1, 6)
    ]
    (run / "history.json").write_text(json.dumps(history))
    if with_metrics:
        confusion = np.diag([9, 8, 10]).tolist()
        confusion[1][2] = 2
        metrics = {
            "labels": ["cat", "dog", "<owl>"],
            "accuracy": 0.93,
            "precision": [1.0, 1.0, 0.833],
            "recall": [1.0, 0.8, 1.0],
            "confusion": confusion,
            "split": "test",
        }
        (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.json").write_text(json.dumps({"arch": "resnet18", "lr": 0.003}))


def test_report_writes_curves_confusion_and_html(tmp_path: Path) -> None:
    _write_run(tmp_path)
    html_path = write_report(tmp_path)
    assert html_path == tmp_path / "report.html"
    assert png_size(tmp_path / "curves.png") == (1000, 400)
    assert png_size(tmp_path / "confusion.png") == (500, 500)
    page = html_path.read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert sorted(sources) == ["confusion.png", "curves.png"]
    assert all((tmp_path / s).is_file() for s in sources)
    assert "<script" not in page
    assert "&lt;owl&gt;" in page and "<owl>" not in page  # labels are escaped
    assert "0.9300" in page and "resnet18" in page  # accuracy and the run config
    # dog: precision 1.0, recall 0.8 -> F1 0.8889, support 10
    assert re.search(r"<td>dog</td><td>1\.0000</td><td>0\.8000</td><td>0\.8889</td><td>10</td>", page)


def test_report_tolerates_missing_files(tmp_path: Path) -> None:
    _write_run(tmp_path, with_metrics=False)
    page = write_report(tmp_path).read_text()
    assert "metrics.json not found" in page
    assert (tmp_path / "curves.png").is_file() and not (tmp_path / "confusion.png").exists()
    assert re.findall(r'src="([^"]+)"', page) == ["curves.png"]
    with pytest.raises(StriateError, match="run directory not found"):
        write_report(tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# Separability


def test_separability_numbers_on_known_cases(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 20)
    onehot = np.eye(10)[y]
    sil, knn, linear, _ = layer_separability(onehot, y)
    assert sil == pytest.approx(1.0) and knn == 1.0 and linear == 1.0
    sil, knn, linear, _ = layer_separability(rng.normal(size=(200, 16)), y)
    assert abs(sil) < 0.1 and knn < 0.25 and linear < 0.25  # chance is 0.1
    feats = {"random": rng.normal(size=(200, 16)), "labels": onehot, "embedding": onehot.copy()}
    merged = merge_identical(feats)
    assert list(merged) == ["random", "labels = embedding"]
    scores = run_separability(merged, y, LABELS, tmp_path, perplexity=10)
    assert [s.layer for s in scores] == ["random", "labels = embedding"]
    assert scores[1].knn_accuracy == 1.0 and scores[0].knn_accuracy < 0.25
    assert png_size(tmp_path / "separability.png") == (840, 360)  # 2 panels of 3.6 in + legend, 100 dpi
    rows = (tmp_path / "separability.csv").read_text().splitlines()
    assert rows[0].startswith("layer,dim,silhouette,knn_accuracy,linear_accuracy") and len(rows) == 3
    assert json.loads((tmp_path / "separability.json").read_text())[1]["silhouette"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Specialization


def test_specialization_auc_fisher_and_mds(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), 15)
    noise = rng.normal(size=(150, 6))
    indicator = (y == 8).astype(float)
    feats = np.column_stack([noise, indicator, -indicator, 2 * noise[:, 0] + 1, np.zeros(150)])
    auc = class_auc(feats, y, 10)
    assert auc[6, 8] == 1.0 and auc[7, 8] == 0.0 and auc[9, 8] == 0.5  # indicator, its negation, dead
    assert auc[2, 3] == pytest.approx(roc_auc_score(y == 3, noise[:, 2]))
    fisher = class_fisher(feats, y, 10)
    assert fisher[6, 8] > 1e6 and fisher[6, 8] > 100 * fisher[:6, 8].max()
    dis = neuron_dissimilarity(feats)
    assert dis[0, 8] == pytest.approx(0.0, abs=1e-9) and dis[6, 7] == pytest.approx(2.0)
    spec = run_specialization(feats, y, LABELS, target=8, out_dir=tmp_path, layer="toy")
    assert spec.dead.tolist() == [False] * 9 + [True] and np.isnan(spec.mds[9]).all()
    # perfectly correlated neurons land on the same spot; anti-correlated ones far apart
    assert np.linalg.norm(spec.mds[0] - spec.mds[8]) < 0.05 * np.linalg.norm(spec.mds[6] - spec.mds[7])
    assert spec.best_class[6] == 8
    assert png_size(tmp_path / "specialization.png") == (1300, 560)
    import csv

    with (tmp_path / "specialization.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 and list(rows[0])[:4] == ["neuron", "auc_8", "fisher_8", "best_class"]
    for j, row in enumerate(rows):  # every neuron's figures are the ones computed above
        assert float(row["auc_8"]) == pytest.approx(auc[j, 8], abs=1e-6), j
        assert float(row["fisher_8"]) == pytest.approx(fisher[j, 8], rel=1e-6, abs=1e-6), j
    assert (rows[6]["auc_8"], rows[6]["best_class"], rows[6]["best_auc"]) == ("1.000000", "8", "1.000000")


# --------------------------------------------------------------------------------------------
# Occlusion and faithfulness on an ONNX model Striate did not export


def _region_model(path: Path, h: int = 12, w: int = 12, classes: int = 2) -> Path:
    """logits = [mean of image[:, :, 2:5, 3:7], 0, ...]: the only region that matters is known."""
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["region"]),
            helper.make_node("ReduceMean", ["region", "rm_axes"], ["score"], keepdims=1),  # [N,1,1,1]
            helper.make_node("Reshape", ["score", "shape"], ["score2"]),  # [N, 1]
            helper.make_node("Mul", ["score2", "zero"], ["other"]),
            helper.make_node("Concat", ["score2", "other"], ["logits"], axis=1),
        ],
        "region_mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[
            helper.make_tensor("starts", TensorProto.INT64, [2], [2, 3]),
            helper.make_tensor("ends", TensorProto.INT64, [2], [5, 7]),
            helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
            helper.make_tensor("rm_axes", TensorProto.INT64, [3], [1, 2, 3]),
            helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1]),
            helper.make_tensor("zero", TensorProto.FLOAT, [1, classes - 1], [0.0] * (classes - 1)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_occlusion_finds_the_region_of_any_onnx_classifier(tmp_path: Path) -> None:
    logits_fn, shape = onnx_classifier(_region_model(tmp_path / "region.onnx"))
    assert shape[1:] == (1, 12, 12)
    rng = np.random.default_rng(0)
    x = rng.random((1, 12, 12)).astype(np.float32)
    x[:, 2:5, 3:7] += 3.0
    region = np.zeros((12, 12), dtype=bool)
    region[2:5, 3:7] = True
    imp = gallery.make_methods(["occlusion"], logits_fn, None, patch=2, stride=1)["occlusion"](x, 0)
    assert imp.shape == (12, 12)
    assert region[np.unravel_index(imp.argmax(), imp.shape)]
    assert imp[region].min() > 0
    near = np.zeros_like(region)
    near[1:6, 2:8] = True  # patches of side 2 overlapping the region reach one pixel out
    assert np.all(imp[~near] == 0)
    assert imp[region].mean() > 3 * imp[near & ~region].mean()
    # faithfulness: removing the region's 12 pixels (>= 8.3%) drops the class more than removing
    # as many random ones; removing the least important (outside it) changes nothing
    for fill in ("road", "mean"):
        fractions = (0.09, 0.2)
        morf = gallery.deletion_drops(logits_fn, x, 0, region.astype(float), fractions, fill=fill)
        lerf = gallery.deletion_drops(logits_fn, x, 0, region.astype(float), fractions, fill=fill, least_first=True)
        rand = gallery.deletion_drops(logits_fn, x, 0, None, fractions, repeats=5, fill=fill)
        assert np.all(morf > rand + 0.05) and np.all(np.abs(lerf) < 1e-6)
    # the per-map scores tell the region's map from its opposite
    opposite = (~region).astype(np.float32)
    for score, right_is_higher in (("road", True), ("deletion", False), ("insertion", True)):
        right = gallery.map_score(logits_fn, x, region.astype(np.float32), 0, score)
        wrong = gallery.map_score(logits_fn, x, opposite, 0, score)
        assert (right > wrong + 0.01) if right_is_higher else (right < wrong - 0.01), (score, right, wrong)
    rise = gallery.make_methods(["rise"], logits_fn, None)["rise"](x, 0)
    assert rise[region].mean() > rise[~near].mean()


def test_road_imputation_fills_from_neighbours() -> None:
    x = np.ones((1, 8, 8), dtype=np.float32)
    x[0, :, 4:] = 3.0
    mask = np.zeros((8, 8), dtype=bool)
    mask[3:5, 3:5] = True  # straddles the edge between the 1s and the 3s
    out = gallery.remove_pixels(x, mask, "road", np.random.default_rng(0), noise=0.0)
    assert np.array_equal(out[0][~mask], x[0][~mask])
    assert np.all((out[0][mask] > 1.0) & (out[0][mask] < 3.0))


# --------------------------------------------------------------------------------------------
# Real model: checkpoint (torch) and bundle (onnxruntime) give the same layers and features


def test_checkpoint_and_bundle_features_agree(trained, bundle: Path) -> None:
    _, ckpt_path = trained
    ckpt_model, onnx_model = open_model(ckpt_path), open_model(bundle)
    assert isinstance(onnx_model, OnnxFeatureModel)
    assert ckpt_model.layer_names == onnx_model.layer_names == ["layer1", "layer2", "layer3", "layer4", "embedding"]
    sample = load_sample(LABELS, SPEC, "digits", n=60, run_config=ckpt_model.run_config)
    assert len(sample.y) == 60 and set(sample.y.tolist()) == set(range(10))
    a, b = ckpt_model.features(sample.x), onnx_model.features(sample.x)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-4, rtol=1e-4)
    maps = onnx_model.feature_maps(sample.x[:2], "layer2")
    np.testing.assert_allclose(maps.mean(axis=(2, 3)), b["layer2"][:2], atol=1e-5)
    acc = float((ckpt_model.logits(sample.x).argmax(1) == sample.y).mean())
    assert acc > 0.5
    with pytest.raises(StriateError, match="available: layer1"):
        onnx_model.features(sample.x, ["nope"])


def test_gallery_on_a_bundle(bundle: Path, tmp_path: Path) -> None:
    fm = open_model(bundle)
    sample = load_sample(fm.labels, fm.preprocessing, "digits", n=120)
    methods = gallery.make_methods(["gradcam", "gradcam++", "occlusion", "scorecam"], fm.logits, fm, patch=2, stride=1)
    result = gallery.build_gallery(
        fm.logits, sample.x, sample.y, methods, n_correct=2, n_wrong=1, fractions=(0.1, 0.3), random_repeats=2
    )
    assert len(result.items) == 3
    probs = softmax(fm.logits(sample.x))
    assert [it.pred == it.true for it in result.items] == [True, True, False]
    assert all(it.pred == probs[it.index].argmax() for it in result.items)
    for item in result.items:
        for heat in item.maps.values():
            assert heat.shape == (SIZE, SIZE) and np.isfinite(heat).all()
        assert item.maps["gradcam"].min() >= 0.0 and item.maps["gradcam"].max() <= 1.0
        assert set(item.scores) == {"gradcam", "gradcampp", "occlusion", "scorecam"}
        assert all(-1.0 <= v <= 1.0 for v in item.scores.values())
    summary = result.summary()
    assert set(summary) == {"gradcam", "gradcampp", "occlusion", "scorecam", "random"}
    # On a trained model the maps beat random pixels: removing what they point at first drops the
    # predicted class more than removing as many random pixels.
    assert max(summary[m]["excess_over_random"] for m in methods) > 0.02
    assert np.mean([summary[m]["road"] for m in methods]) > 0
    gallery.plot_gallery(result, sample.x, fm.labels, tmp_path / "gallery.png")
    gallery.plot_faithfulness(result, tmp_path / "faithfulness.png")
    gallery.write_results(result, fm.labels, tmp_path)
    assert png_size(tmp_path / "gallery.png") == (1100, 700)  # (1 + 4 methods) x 3 rows of 2.2 in
    assert png_size(tmp_path / "faithfulness.png") == (700, 450)
    rows = (tmp_path / "faithfulness.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * (5 + 4) * 2  # images x (methods+random, methods) x fractions


def test_torch_and_onnx_gradient_methods_agree_in_the_gallery(trained, bundle: Path) -> None:
    """The gallery's two faces of each gradient method: autograd on the checkpoint, the explain
    graph of its bundle, on the same images and classes (maps at input size)."""
    _, ckpt_path = trained
    fm, ckpt = open_model(bundle), open_model(ckpt_path)
    x = load_sample(LABELS, SPEC, "digits", n=20).x[:4]
    target = fm.logits(x).argmax(1)
    names = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam"]
    from_graph = gallery.make_methods(names, fm.logits, fm)
    from_torch = gallery.make_methods(names, ckpt.logits, ckpt)
    for name in names:
        a = np.stack([from_graph[name](xi, int(t)) for xi, t in zip(x, target, strict=True)])
        b = np.stack([from_torch[name](xi, int(t)) for xi, t in zip(x, target, strict=True)])
        assert a.shape == b.shape == (4, SIZE, SIZE)
        assert (a.max(axis=(1, 2)) > 0.5).any(), f"{name}: every map is flat"
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_activation_grid_size(tmp_path: Path) -> None:
    maps = np.random.default_rng(0).random((12, 4, 4)).astype(np.float32)
    path = plot_activation_grid(np.zeros((1, 16, 16), np.float32), maps, tmp_path / "a.png", layer="s")
    assert png_size(path) == (1040, 310)  # 13 cells -> 2 rows x 8 of 1.3 in, + 0.5 in title
    path = plot_activation_grid(
        np.zeros((3, 16, 16), np.float32), np.zeros((100, 2, 2)), tmp_path / "b.png", max_channels=7
    )
    assert png_size(path) == (1040, 180)  # input + 7 most active channels -> 1 row


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_analyses_on_checkpoint_and_bundle(trained, bundle: Path, tmp_path: Path, capsys) -> None:
    _, ckpt_path = trained
    out = tmp_path / "sep"
    assert (
        main(["analyze", "separability", str(ckpt_path), "--samples", "150", "--perplexity", "10", "--out", str(out)])
        == 0
    )  # the data comes from the checkpoint's config
    text = capsys.readouterr().out
    assert "layer4 = embedding" in text and "input" in text
    scores = {r["layer"]: r for r in json.loads((out / "separability.json").read_text())}
    assert scores["layer4 = embedding"]["knn_accuracy"] > scores["layer1"]["knn_accuracy"]
    assert png_size(out / "separability.png") == (5 * 360 + 120, 360 + 40)  # 5 panels in a row + title

    assert (
        main(
            [
                "analyze",
                "specialization",
                str(bundle),
                "--data",
                "digits",
                "--class",
                "8",
                "--samples",
                "100",
                "--out",
                str(tmp_path / "spec"),
            ]
        )
        == 0
    )
    assert len((tmp_path / "spec" / "specialization.csv").read_text().splitlines()) == 1 + 32

    assert (
        main(
            [
                "analyze",
                "activations",
                str(bundle),
                "--data",
                "digits",
                "--layer",
                "layer2",
                "--samples",
                "20",
                "--out",
                str(tmp_path / "act"),
            ]
        )
        == 0
    )
    assert png_size(tmp_path / "act" / "activations_layer2.png") == (8 * 130, 2 * 130 + 50)  # 9 cells

    assert (
        main(
            [
                "analyze",
                "gallery",
                str(ckpt_path),
                "--methods",
                "gradcam,occlusion",
                "--correct",
                "1",
                "--wrong",
                "1",
                "--samples",
                "60",
                "--fractions",
                "0.1,0.2",
                "--out",
                str(tmp_path / "gal"),
            ]
        )
        == 0
    )
    assert png_size(tmp_path / "gal" / "gallery.png") == (660, 480)
    capsys.readouterr()
    argv = ["analyze", "gallery", str(bundle), "--methods", "gradcam++,layercam,rise", "--score", "deletion"]
    argv += ["--correct", "1", "--wrong", "0", "--samples", "30", "--out", str(tmp_path / "gal2")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "deletion" in printed and all(m in printed for m in ("gradcampp", "layercam", "rise"))
    summary = json.loads((tmp_path / "gal2" / "faithfulness.json").read_text())["methods"]
    assert all(0.0 <= summary[m]["deletion"] <= 1.0 for m in ("gradcampp", "layercam", "rise"))
    assert png_size(tmp_path / "gal2" / "gallery.png") == (880, 260)  # (1 + 3 methods) x 1 row


def test_cli_gallery_on_a_bare_onnx_model(tmp_path: Path, capsys) -> None:
    model = _region_model(tmp_path / "region.onnx", h=8, w=8, classes=10)  # digits' 10 classes
    assert (
        main(
            [
                "analyze",
                "gallery",
                str(model),
                "--data",
                "digits",
                "--correct",
                "1",
                "--wrong",
                "0",
                "--samples",
                "20",
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 0
    )
    assert "skipping gradcam" in capsys.readouterr().out
    summary = json.loads((tmp_path / "g" / "faithfulness.json").read_text())["methods"]
    assert set(summary) == {"occlusion", "random"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["separability", "/no/such.pt", "--data", "digits"], "checkpoint not found"),
        (["separability", "{bundle}", "--data", "digits", "--layers", "layer9"], "layer 'layer9'"),
        (["specialization", "{bundle}", "--data", "digits", "--class", "cat"], "unknown class 'cat'"),
        (["activations", "{bundle}", "--data", "digits", "--layer", "embedding"], "no feature maps"),
        (["separability", "{bundle}"], "pass --data or --data-dir"),
        (["gallery", "{bundle}", "--data", "digits", "--fractions", "0.1,x"], "--fractions"),
    ],
)
def test_cli_bad_input_is_one_clear_line(
    argv, message, bundle: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [a.replace("{bundle}", str(bundle)) for a in argv]
    if argv == ["separability", str(bundle)]:  # a bundle that does not record its data
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["provenance"]["data"] = None
        copy = tmp_path / "b"
        copy.mkdir()
        for f in bundle.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        (copy / "manifest.json").write_text(json.dumps(manifest))
        argv[1] = str(copy)
    assert main(["analyze", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_separability_of_too_few_images_is_one_line_not_a_tsne_traceback(tmp_path):
    from training.analysis.separability import run_separability

    features = {"layer": np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)}
    with pytest.raises(StriateError, match="separability needs at least 3 images to map, the sample has 2"):
        run_separability(features, np.array([0, 1]), ["a", "b"], tmp_path)
