"""Explain over the Open Inference Protocol, driven by stock tritonclient.http.

tritonclient has no explain verb, so the tests use its low-level request API: the request body
from `generate_request_body` (binary tensors, `parameters`), POSTed with the client's own
transport, and the answer read by its `InferResult`, exactly as `infer` does.
"""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as tritonhttp
from service_fixtures import DEFAULT_BUNDLE, digits_png_bytes, served_models
from tritonclient.utils import InferenceServerException

from striate.manifest import Manifest
from striate.preprocess import decode_image, preprocess

pytestmark = pytest.mark.skipif("digits" not in served_models(), reason="no default bundle")


@pytest.fixture
def triton(server):
    c = tritonhttp.InferenceServerClient(server[len("http://") :])
    yield c
    c.close()


def explain(client, model: str, inputs, outputs=None, parameters=None, version: str = "") -> tritonhttp.InferResult:
    body, json_size = tritonhttp.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, parameters=parameters
    )
    headers = {"Inference-Header-Content-Length": str(json_size)} if json_size is not None else {}
    where = f"v2/models/{model}/versions/{version}/explain" if version else f"v2/models/{model}/explain"
    response = client._post(request_uri=where, request_body=body, headers=headers, query_params=None)
    if response.status_code != 200:
        raise InferenceServerException(msg=response.read().decode(), status=str(response.status_code))
    return tritonhttp.InferResult(response, False)


def digits(model_dir, indices=(3, 5)) -> np.ndarray:
    spec = Manifest.load(model_dir / "digits" / "1").preprocessing
    return np.stack([preprocess(decode_image(digits_png_bytes(i)), spec) for i in indices])


def test_server_metadata_advertises_explain(triton):
    assert "explain" in triton.get_server_metadata()["extensions"]


def test_binary_explain_with_several_targets_matches_onnxruntime(triton, model_dir):
    x = digits(model_dir)
    image = tritonhttp.InferInput("image", list(x.shape), "FP32")
    image.set_data_from_numpy(x)  # binary
    outputs = [tritonhttp.InferRequestedOutput(n, binary_data=True) for n in ("cam", "explained", "logits")]
    result = explain(triton, "digits", [image], outputs, {"method": "hirescam", "targets": [2, 8]})
    response = result.get_response()
    assert response["parameters"] == {"method": "hirescam", "target_layer": "layer4"}
    assert [o["name"] for o in response["outputs"]] == ["cam", "explained", "logits"]
    session = ort.InferenceSession(str(DEFAULT_BUNDLE / "explain.onnx"), providers=["CPUExecutionProvider"])
    logits, explained, cam = session.run(
        ["logits", "explained", "cam_hirescam"], {"image": x, "targets": np.array([[2, 8], [2, 8]])}
    )
    np.testing.assert_allclose(result.as_numpy("cam"), cam, atol=1e-6)
    assert result.as_numpy("explained").tolist() == explained.tolist() == [[2, 8], [2, 8]]
    np.testing.assert_allclose(result.as_numpy("logits"), logits, atol=1e-5)


def test_encoded_images_json_outputs_top_targets_and_score(triton, model_dir):
    pngs = [digits_png_bytes(i) for i in (1, 7)]
    image = tritonhttp.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array(pngs, dtype=object))
    outputs = [tritonhttp.InferRequestedOutput("score", binary_data=False), tritonhttp.InferRequestedOutput("cam")]
    params = {"method": "scorecam", "top_targets": 2, "score": "drop"}
    result = explain(triton, "digits", [image], outputs, params, version="1")
    assert result.as_numpy("cam").shape == (2, 2, 4, 4)
    scores = result.as_numpy("score")
    assert scores.shape == (2, 2) and np.isfinite(scores).all() and (scores >= 0).all()
    assert "data" in result.get_response()["outputs"][0]


def test_explain_errors_are_v2_errors(triton, server, model_dir):
    x = digits(model_dir, (1,))
    image = tritonhttp.InferInput("image", list(x.shape), "FP32")
    image.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="supported: gradcam"):
        explain(triton, "digits", [image], parameters={"method": "nope"})
    with pytest.raises(InferenceServerException, match="unknown class 'x'"):
        explain(triton, "digits", [image], parameters={"method": "gradcam", "targets": "1,x"})
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    r = httpx.post(f"{server}/v2/models/digits/explain", json={**body, "parameters": {"top_targets": "two"}})
    assert r.status_code == 400 and r.json() == {"error": 'parameter "top_targets" must be an integer'}
    r = httpx.post(f"{server}/v2/models/digits/explain", json={**body, "outputs": [{"name": "embedding"}]})
    assert r.status_code == 400 and "unknown output(s) ['embedding']" in r.json()["error"]
    r = httpx.post(f"{server}/v2/models/digits/explain", json={**body, "parameters": {"targets": [1] * 11}})
    assert r.status_code == 422 and "STRIATE_MAX_EXPLAIN_TARGETS" in r.json()["error"]
    ok = httpx.post(f"{server}/v2/models/digits/explain", json=body)
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"
    assert {o["name"] for o in ok.json()["outputs"]} == {"cam", "explained", "logits"}
