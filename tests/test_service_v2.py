"""Open Inference Protocol (KServe v2) with stock tritonclient.http, binary and JSON tensors."""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as tritonhttp
from service_fixtures import digits_png_bytes, served_models

from striate.manifest import Manifest
from striate.preprocess import decode_image, preprocess


@pytest.fixture
def triton(server):
    c = tritonhttp.InferenceServerClient(server[len("http://") :])
    yield c
    c.close()


def _direct(model_dir, name: str, x, outputs: list[str], graph: str = "model.onnx", version=None, **feeds):
    versions = sorted(int(p.name) for p in (model_dir / name).iterdir() if p.name.isdigit())
    path = model_dir / name / str(version or versions[-1]) / graph
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(outputs, {"image": x, **feeds})


def _images(name: str, model_dir, n: int = 3) -> np.ndarray:
    versions = sorted(int(p.name) for p in (model_dir / name).iterdir() if p.name.isdigit())
    spec = Manifest.load(model_dir / name / str(versions[-1])).input
    return np.random.default_rng(0).standard_normal((n, spec.channels, spec.height, spec.width)).astype(np.float32)


def test_server_and_model_endpoints(triton, server):
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    assert triton.is_model_ready("tiny") and triton.is_model_ready("tiny", "1")
    assert not triton.is_model_ready("nope") and not triton.is_model_ready("tiny", "3")
    md = triton.get_model_metadata("tiny", "1")
    assert md["versions"] == ["1", "2"]
    assert md["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert {o["name"] for o in md["outputs"]} >= {"logits", "embedding", "s1_map", "cam"}
    config = triton.get_model_config("tiny")
    assert config["max_batch_size"] >= 1 and config["input"][0]["dims"] == [1, 8, 8]
    assert httpx.get(f"{server}/v2/models/tiny/versions/2/ready").status_code == 200


@pytest.mark.parametrize("name", served_models())
def test_infer_binary_defaults_match_onnxruntime(triton, model_dir, name):
    x = _images(name, model_dir)
    inp = tritonhttp.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary by default, as are the outputs
    result = triton.infer(name, [inp])
    logits, embedding = _direct(model_dir, name, x, ["logits", "embedding"])
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("embedding"), embedding, rtol=1e-5, atol=1e-5)
    assert result.get_response()["model_name"] == name


def test_infer_json_tensors_and_chosen_outputs(triton, model_dir):
    x = _images("tiny", model_dir, 2)
    inp = tritonhttp.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outs = [tritonhttp.InferRequestedOutput("s2_map", binary_data=False), tritonhttp.InferRequestedOutput("logits")]
    result = triton.infer("tiny", [inp], model_version="1", outputs=outs, request_id="abc")
    response = result.get_response()
    assert response["id"] == "abc" and response["model_version"] == "1"
    assert [o["name"] for o in response["outputs"]] == ["s2_map", "logits"]
    assert "data" in response["outputs"][0] and "binary_data_size" in response["outputs"][1]["parameters"]
    s2_map, logits = _direct(model_dir, "tiny", x, ["s2_map", "logits"], version=1)
    np.testing.assert_allclose(result.as_numpy("s2_map"), s2_map, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-5, atol=1e-6)


def test_infer_cam_with_target(triton, model_dir):
    spec = Manifest.load(model_dir / "tiny" / "2").preprocessing
    x = np.stack([preprocess(decode_image(digits_png_bytes(i)), spec) for i in (3, 4)])  # real digits: maps not flat
    inp = tritonhttp.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    target = tritonhttp.InferInput("target", [2], "INT64")
    target.set_data_from_numpy(np.array([3, -1], dtype=np.int64))
    outs = [tritonhttp.InferRequestedOutput("cam"), tritonhttp.InferRequestedOutput("embedding")]
    result = triton.infer("tiny", [inp, target], outputs=outs)
    # The explain graph itself, one target per image: [N, 1, h, w] Grad-CAM maps.
    targets = np.array([[3], [-1]], dtype=np.int64)
    (cam,) = _direct(model_dir, "tiny", x, ["cam_gradcam"], graph="explain.onnx", targets=targets)
    assert cam.shape[:2] == (2, 1) and cam.std() > 0
    np.testing.assert_allclose(result.as_numpy("cam"), cam[:, 0], rtol=1e-5, atol=1e-6)
    assert result.as_numpy("embedding").shape == (2, 16)


def test_plain_json_over_httpx(server, model_dir):
    x = _images("tiny", model_dir, 1)
    body = {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}],
        "outputs": [{"name": "logits"}],
    }
    r = httpx.post(f"{server}/v2/models/tiny/infer", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    out = r.json()["outputs"][0]
    assert out["shape"] == [1, 10] and out["datatype"] == "FP32"
    np.testing.assert_allclose(
        np.array(out["data"]).reshape(1, 10), _direct(model_dir, "tiny", x, ["logits"])[0], rtol=1e-5, atol=1e-6
    )


def test_gzip_request_body(triton, model_dir):
    x = _images("tiny", model_dir, 2)
    inp = tritonhttp.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = triton.infer("tiny", [inp], request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("logits"), _direct(model_dir, "tiny", x, ["logits"])[0], rtol=1e-5)


def test_encoded_images_as_bytes_are_preprocessed_by_the_server(triton, server, model_dir):
    """BYTES inputs carry JPEG/PNG files: the server applies the manifest, as for v1 (Triton can't)."""
    import base64

    from service_fixtures import digits_png_bytes

    from striate.preprocess import decode_image, preprocess

    pngs = [digits_png_bytes(i) for i in (1, 2)]
    inp = tritonhttp.InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(np.array(pngs, dtype=object))
    result = triton.infer("tiny", [inp], outputs=[tritonhttp.InferRequestedOutput("logits")])
    spec = Manifest.load(model_dir / "tiny" / "2").preprocessing
    x = np.stack([preprocess(decode_image(p), spec) for p in pngs])
    np.testing.assert_allclose(result.as_numpy("logits"), _direct(model_dir, "tiny", x, ["logits"])[0], rtol=1e-5)
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(pngs[0]).decode()]}]
    }
    r = httpx.post(f"{server}/v2/models/tiny/infer", json=body)
    assert r.status_code == 200
    bad = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b"xx").decode()]}]}
    r = httpx.post(f"{server}/v2/models/tiny/infer", json=bad)
    assert r.status_code == 400 and "not a recognised image" in r.json()["error"]


def _text(item) -> str:
    """tritonclient gives BYTES elements as bytes from binary outputs and as str from JSON ones."""
    return item.decode() if isinstance(item, bytes) else item


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension_like_triton(triton, model_dir, binary):
    """`InferRequestedOutput(name, class_count=k)`: BYTES [N, k] of "score:index:label", best first."""
    x = _images("tiny", model_dir, 3)
    inp = tritonhttp.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outs = [
        tritonhttp.InferRequestedOutput("logits", binary_data=binary, class_count=3),
        tritonhttp.InferRequestedOutput("embedding", binary_data=binary, class_count=2),
    ]
    result = triton.infer("tiny", [inp], outputs=outs)
    logits, embedding = _direct(model_dir, "tiny", x, ["logits", "embedding"])
    top = result.as_numpy("logits")
    assert top.shape == (3, 3) and result.get_output("logits")["datatype"] == "BYTES"
    labels = Manifest.load(model_dir / "tiny" / "2").labels
    for row, scores in zip(top, logits, strict=True):
        parsed = [_text(item).split(":") for item in row]
        indices = [int(index) for _, index, _ in parsed]
        assert indices == list(np.argsort(-scores)[:3])
        for score, index, label in parsed:
            assert label == labels[int(index)]
            assert float(score) == pytest.approx(float(scores[int(index)]), abs=1e-5)
    emb = result.as_numpy("embedding")
    for row, values in zip(emb, embedding, strict=True):
        parsed = [_text(item).split(":") for item in row]
        assert all(len(p) == 2 for p in parsed)  # no labels for an embedding
        assert [int(i) for _, i in parsed] == list(np.argsort(-values, kind="stable")[:2])


def test_classification_extension_refuses_maps_and_bad_counts(server, model_dir):
    x = _images("tiny", model_dir, 1)
    image = {"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    for outputs, words in (
        ([{"name": "s2_map", "parameters": {"classification": 2}}], "[N, classes]"),
        ([{"name": "logits", "parameters": {"classification": 0}}], "positive integer"),
        ([{"name": "logits", "parameters": {"classification": "3"}}], "positive integer"),
    ):
        r = httpx.post(f"{server}/v2/models/tiny/infer", json={"inputs": [image], "outputs": outputs})
        assert r.status_code == 400 and words in r.json()["error"], r.text
    many = {"inputs": [image], "outputs": [{"name": "logits", "parameters": {"classification": 50}}]}
    r = httpx.post(f"{server}/v2/models/tiny/infer", json=many)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 10]  # k past the classes: all


@pytest.mark.parametrize("verb", ["infer", "explain"])
@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"parameters": [None, None]}, '"parameters" must be an object'),
        ({"parameters": {"binary_data_size": True}}, "non-negative integer"),
        ({"datatype": {}}, "unsupported datatype"),
    ],
    ids=["parameters-a-list", "size-a-bool", "datatype-an-object"],
)
def test_malformed_input_parameters_are_a_400_not_a_crash(server, verb, fields, words):
    """Found by schemathesis: an input's `parameters` given as a list reached `.get`, and a datatype
    given as an object reached a dict lookup (both 500s)."""
    image = {"name": "image", "datatype": "FP32", "shape": [1], "data": [0.0]} | fields
    r = httpx.post(f"{server}/v2/models/tiny/{verb}", json={"inputs": [image]})
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200


def test_openapi_documents_v2_truthfully(server):
    spec = httpx.get(f"{server}/openapi.json").json()
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["required"] == ["inputs"]
    assert {"400", "401", "404", "413", "503"} <= set(infer["responses"]) and "422" not in infer["responses"]
    error = infer["responses"]["400"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/V2ErrorBody"}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            names = [p["name"] for p in op.get("parameters", [])]
            assert ("version" in names) == ("{version}" in path), (method, path, names)  # no phantom version
            if path.startswith("/v2") and not path.endswith("/explain"):  # explain: 422 for unusable parameters
                assert "422" not in op["responses"], (method, path)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
