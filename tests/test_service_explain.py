"""The explain API end to end: a real uvicorn on loopback, real bundles, real digits.

`digits` is the committed default bundle (five gradient methods in its explain graph), `tiny` a
bundle of the first layout (Grad-CAM, one target per image), `plain` a bundle without any explain
graph (gradient-free methods only). Maps are checked against onnxruntime run directly and, for
Score-CAM and Eigen-CAM, against pytorch-grad-cam on the checkpoint the bundle was exported from.
"""

from __future__ import annotations

import io
import re
import shutil

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from service_fixtures import (
    DEFAULT_BUNDLE,
    REPO,
    as_first_layout,
    build_bundle,
    digits_png_bytes,
    make_settings,
    run_server,
    without_gradient_graph,
)

from service.explain_graphs import prune, pruned_graph
from service.repository import LoadedModel
from striate.explain.methods import GRADIENT_METHODS, METHODS
from striate.manifest import Manifest
from striate.preprocess import decode_image, preprocess

PNG = {"content-type": "image/png"}
CHECKPOINT = REPO / "checkpoints" / "digits_default.pt"
pytestmark = pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no default bundle")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain-models")
    as_first_layout(build_bundle(root, "tiny", 1, seed=0), seed=0)
    without_gradient_graph(build_bundle(root, "plain", 1, seed=3))
    shutil.copytree(DEFAULT_BUNDLE, root / "digits" / "1")
    return root


@pytest.fixture(scope="module")
def client(model_dir):
    with run_server(make_settings(model_dir)) as url, httpx.Client(base_url=url, timeout=120) as c:
        yield c


def tensor(model_dir, name: str, data: bytes) -> np.ndarray:
    return preprocess(decode_image(data), Manifest.load(model_dir / name / "1").preprocessing)[None]


def direct(model_dir, name: str, graph: str, feeds: dict, outputs: list[str]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_dir / name / "1" / graph), providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


def maps(body: dict, image: int = 0) -> np.ndarray:
    return np.array([e["cam"] for e in body["results"][image]["explanations"]])


def test_metadata_lists_methods_with_parity(client):
    info = client.get("/v1/models/digits").json()["explain"]
    assert info["target_layer"] == "layer4" and info["default_method"] == "gradcam"
    assert [m["name"] for m in info["methods"]] == list(METHODS)
    for m in info["methods"]:
        assert m["kind"] == METHODS[m["name"]].kind and m["title"] == METHODS[m["name"]].title
        assert (m["parity"] is not None and m["parity"] <= 1e-4) == (m["kind"] == "gradient")
    assert info["scores"] == ["road", "deletion", "insertion", "drop"]
    assert (info["max_targets"], info["max_passes"]) == (10, 2048)
    plain = client.get("/v1/models/plain").json()["explain"]
    assert [m["name"] for m in plain["methods"]] == ["eigencam", "scorecam", "occlusion", "rise"]
    assert plain["default_method"] == "occlusion" and plain["target_layer"] == "s2"


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_several_targets_in_one_graph_run(client, model_dir, method):
    data = digits_png_bytes(5)
    body = client.post(f"/v1/models/digits/explain?method={method}&targets=3,7,5", content=data, headers=PNG).json()
    assert body["method"] == method and body["target_layer"] == "layer4"
    res = body["results"][0]
    assert [e["target"]["index"] for e in res["explanations"]] == [3, 7, 5]
    assert res["target"] == res["explanations"][0]["target"] and res["cam"] == res["explanations"][0]["cam"]
    (expected,) = direct(
        model_dir,
        "digits",
        "explain.onnx",
        {"image": tensor(model_dir, "digits", data), "targets": np.array([[3, 7, 5]])},
        [f"cam_{method}"],
    )
    np.testing.assert_allclose(maps(body), expected[0], atol=1e-6)
    assert not np.allclose(maps(body)[0], maps(body)[1])


def test_top_targets_follow_the_ranking_and_labels_work(client):
    data = [digits_png_bytes(i) for i in (1, 2)]
    files = [("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(data)]
    body = client.post("/v1/models/digits/explain?method=layercam&top_targets=3", files=files).json()
    for res in body["results"]:
        ranked = [c["index"] for c in res["prediction"]["top_k"][:3]]
        assert [e["target"]["index"] for e in res["explanations"]] == ranked
        assert all(e["score"] is None for e in res["explanations"])
    by_label = client.post("/v1/models/digits/explain?targets=8,1", content=data[0], headers=PNG).json()
    assert [e["target"]["label"] for e in by_label["results"][0]["explanations"]] == ["8", "1"]


def test_first_layout_bundle_explains_several_targets(client, model_dir):
    data = digits_png_bytes(4)
    body = client.post("/v1/models/tiny/explain?targets=1,4", content=data, headers=PNG).json()
    x = tensor(model_dir, "tiny", data)
    for j, t in enumerate((1, 4)):
        (cam,) = direct(model_dir, "tiny", "explain.onnx", {"image": x, "target": np.array([t])}, ["cam"])
        np.testing.assert_allclose(maps(body)[j], cam[0], atol=1e-6)
    r = client.post("/v1/models/tiny/explain?method=hirescam", content=data, headers=PNG)
    assert r.status_code == 422 and "re-export" in r.json()["error"]["message"]


def _package(method: str, x: np.ndarray, targets: list[int]) -> np.ndarray:
    from training.checkpoint import load_checkpoint
    from training.explain.reference import package_cams

    model = load_checkpoint(CHECKPOINT).build_model().eval()
    return package_cams(model, torch.from_numpy(x), method, np.array([targets]))[0]


@pytest.mark.parametrize("method", ["scorecam", "eigencam"])
def test_forward_cams_match_pytorch_grad_cam(client, model_dir, method):
    data = digits_png_bytes(7)
    body = client.post(f"/v1/models/digits/explain?method={method}&targets=7,1", content=data, headers=PNG).json()
    got = maps(body)
    assert got.shape == (2, 4, 4) and (got.max(axis=(1, 2)) > 0.5).all()
    np.testing.assert_allclose(got, _package(method, tensor(model_dir, "digits", data), [7, 1]), atol=1e-4)


def test_occlusion_and_rise_on_every_bundle(client):
    data = digits_png_bytes(9)
    for name, size in (("digits", 32), ("plain", 8)):
        for method in ("occlusion", "rise"):
            body = client.post(f"/v1/models/{name}/explain?method={method}", content=data, headers=PNG).json()
            got = maps(body)
            assert got.shape == (1, size, size) and got.min() >= 0 and got.max() == pytest.approx(1.0, abs=1e-6)
            assert body["target_layer"] is None
    first = client.post("/v1/models/digits/explain?method=rise", content=data, headers=PNG).json()
    again = client.post("/v1/models/digits/explain?method=rise", content=data, headers=PNG).json()
    assert maps(first).tolist() == maps(again).tolist()  # seeded: the same request, the same map


def _batches(client, graph: str = "model") -> float:
    text = client.get("/metrics").text
    pattern = rf'striate_batch_size_count\{{[^}}]*graph="{graph}"[^}}]*model="digits"[^}}]*\}} ([0-9.e+]+)'
    found = re.findall(pattern, text) or re.findall(
        rf'striate_batch_size_count\{{[^}}]*model="digits"[^}}]*graph="{graph}"[^}}]*\}} ([0-9.e+]+)', text
    )
    return float(found[0]) if found else 0.0


def test_forward_passes_go_through_the_batcher_in_chunks(client):
    before = _batches(client)
    r = client.post("/v1/models/digits/explain?method=rise", content=digits_png_bytes(2), headers=PNG)
    assert r.status_code == 200
    assert _batches(client) - before >= 512 / 32  # 512 masks in chunks of at most max_batch_size


def test_a_gradient_request_runs_only_its_methods_graph(client, model_dir):
    """Each gradient method gets its own pruned explain graph: the full one (all five maps) never runs."""
    full_before = _batches(client, "explain")
    for method in ("layercam", "gradcam"):
        before = _batches(client, f"explain_{method}")
        r = client.post(
            f"/v1/models/digits/explain?method={method}&targets=2,4", content=digits_png_bytes(3), headers=PNG
        )
        assert r.status_code == 200, r.text
        assert _batches(client, f"explain_{method}") == before + 1
    assert _batches(client, "explain") == full_before


def test_pruned_graph_keeps_one_method_and_its_numbers(model_dir):
    bundle = model_dir / "digits" / "1"
    manifest = Manifest.load(bundle)
    model = LoadedModel("digits", 1, bundle, manifest, graph=None, explain=None, batcher=None)
    ex = manifest.explain
    outputs = [ex.logits_output, ex.explained_output, ex.cam_outputs["xgradcam"]]
    full_nodes = len(onnx.load(str(bundle / ex.graph)).graph.node)
    assert len(prune(bundle / ex.graph, outputs).graph.node) < full_nodes
    graph = pruned_graph(model, outputs, make_settings(model_dir))
    assert list(graph.outputs) == outputs
    feeds = {"image": tensor(model_dir, "digits", digits_png_bytes(8)), "targets": np.array([[-1, 3]])}
    full = direct(model_dir, "digits", ex.graph, feeds, outputs)
    for got, want in zip(graph.run(feeds, outputs).values(), full, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("score", ["road", "deletion", "insertion", "drop"])
def test_scores_come_with_every_map(client, score):
    body = client.post(
        f"/v1/models/digits/explain?method=gradcam&top_targets=2&score={score}",
        content=digits_png_bytes(3),
        headers=PNG,
    ).json()
    for e in body["results"][0]["explanations"]:
        assert e["score"]["name"] == score and np.isfinite(e["score"]["value"])
        assert e["score"]["higher_is_better"] == (score in ("road", "insertion"))


def test_png_overlay_npy(client):
    data = digits_png_bytes(3)
    r = client.post("/v1/models/digits/explain?method=gradcampp&targets=2&format=overlay", content=data, headers=PNG)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-striate-method"] == "gradcampp" and r.headers["x-striate-target-index"] == "2"
    assert r.headers["x-striate-target-label"] == "2" and r.headers["x-striate-model"] == "digits/1"
    files = [("files", (f"{i}.png", digits_png_bytes(i), "image/png")) for i in range(3)]
    r = client.post("/v1/models/digits/explain?method=xgradcam&top_targets=2&format=npy", files=files)
    array = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert array.shape == (3, 2, 4, 4) and array.dtype == np.float32


@pytest.mark.parametrize(
    ("query", "model", "message"),
    [
        ("method=magic", "digits", "supported: gradcam, gradcampp, xgradcam, hirescam, layercam, eigencam"),
        ("method=gradcam", "plain", "no gradient graph"),
        ("targets=" + ",".join(["1"] * 11), "digits", "limit of 10 (raise it with STRIATE_MAX_EXPLAIN_TARGETS)"),
        ("targets=1,2&format=png", "digits", "exactly one image and one target"),
        ("score=beauty", "digits", "unknown score 'beauty'"),
        ("targets=1&top_targets=2", "digits", "either targets or top_targets"),
        ("targets=cat", "digits", "unknown class 'cat'"),
    ],
)
def test_bad_explain_requests_are_clear_422s(client, query, model, message):
    r = client.post(f"/v1/models/{model}/explain?{query}", content=digits_png_bytes(1), headers=PNG)
    assert r.status_code == 422, r.text
    assert message in r.json()["error"]["message"]


def test_pass_cap_counts_every_image(client):
    files = [("files", (f"{i}.png", digits_png_bytes(i), "image/png")) for i in range(5)]
    r = client.post("/v1/models/digits/explain?method=rise", files=files)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "2560 forward passes (512 per image)" in message and "limit of 2048" in message
    assert "STRIATE_MAX_EXPLAIN_PASSES" in message


def test_openapi_declares_the_explain_errors(client):
    doc = client.get("/openapi.json").json()
    post = doc["paths"]["/v1/models/{name}/explain"]["post"]
    assert "422" in post["responses"]
    assert {p["name"] for p in post["parameters"]} >= {"method", "targets", "top_targets", "score", "format"}


def test_concurrent_requests_with_different_target_counts(client, model_dir):
    """The batcher merges only requests whose tensors fit together: [N, 1] and [N, 3] targets arriving
    at once are run apart, and each gets its own maps."""
    from concurrent.futures import ThreadPoolExecutor

    data = digits_png_bytes(6)
    queries = ["targets=4", "targets=1,2,3", "top_targets=2", "targets=0,9"] * 4

    def post(query: str) -> tuple[str, httpx.Response]:
        return query, client.post(f"/v1/models/digits/explain?method=gradcam&{query}", content=data, headers=PNG)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, queries))
    x = tensor(model_dir, "digits", data)
    for query, r in answers:
        assert r.status_code == 200, r.text
        got = maps(r.json())
        explained = [e["target"]["index"] for e in r.json()["results"][0]["explanations"]]
        (expected,) = direct(
            model_dir, "digits", "explain.onnx", {"image": x, "targets": np.array([explained])}, ["cam_gradcam"]
        )
        np.testing.assert_allclose(got, expected[0], atol=1e-6, err_msg=query)
