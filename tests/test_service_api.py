"""The v1 image API end to end: a real uvicorn on loopback, real onnxruntime sessions, real images."""

from __future__ import annotations

import base64
import io

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from service_fixtures import digits_png_bytes, served_models

from striate.manifest import Manifest
from striate.preprocess import decode_image, preprocess

PNG = {"content-type": "image/png"}


def _reference(model_dir, name: str, version: int | None, data: bytes, outputs: list[str]) -> dict:
    """What the bundle gives for these bytes, run directly in onnxruntime (no server, no batching)."""
    versions = sorted(int(p.name) for p in (model_dir / name).iterdir() if p.name.isdigit())
    bundle = model_dir / name / str(version or versions[-1])
    manifest = Manifest.load(bundle)
    x = preprocess(decode_image(data), manifest.preprocessing)[None]
    session = ort.InferenceSession(str(bundle / manifest.graph), providers=["CPUExecutionProvider"])
    return dict(zip(outputs, session.run(outputs, {"image": x}), strict=True))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_model_list_reports_loaded_and_broken(client):
    body = client.get("/v1/models").json()
    names = {m["name"]: m for m in body["models"]}
    assert names["tiny"]["versions"] == [1, 2] and names["tiny"]["latest"] == 2
    assert "tinyrgb" in names
    assert [b["name"] for b in body["broken"]] == ["broken"]
    assert body["broken"][0]["error"].startswith("invalid manifest: version: Field required")


def test_model_detail_latest_and_versions(client):
    latest = client.get("/v1/models/tiny").json()
    assert latest["version"] == 2 and latest["latest"] and latest["versions"] == [1, 2]
    assert latest["provider"] == "CPUExecutionProvider"
    assert [layer["name"] for layer in latest["layers"]] == ["embedding", "s1", "s2"]
    assert latest["preprocessing"]["color_mode"] == "L" and len(latest["labels"]) == 10
    v1 = client.get("/v1/models/tiny/versions/1").json()
    assert v1["version"] == 1 and not v1["latest"]


@pytest.mark.parametrize("name", served_models())
def test_classify_matches_onnxruntime(client, model_dir, name):
    data = digits_png_bytes(7)
    r = client.post(f"/v1/models/{name}/classify?top_k=3", content=data, headers=PNG)
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    probs = _softmax(_reference(model_dir, name, None, data, ["logits"])["logits"])[0]
    order = np.argsort(-probs)[:3]
    assert [t["index"] for t in result["top_k"]] == order.tolist()
    assert result["index"] == order[0]
    np.testing.assert_allclose([t["probability"] for t in result["top_k"]], probs[order], rtol=1e-5, atol=1e-6)


def test_classify_accepts_multipart_json_and_raw(client):
    imgs = [digits_png_bytes(i) for i in range(3)]
    files = [("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(imgs)]
    multi = client.post("/v1/models/tiny/classify", files=files).json()["results"]
    as_json = client.post(
        "/v1/models/tiny/classify", json={"images": [base64.b64encode(d).decode() for d in imgs]}
    ).json()["results"]
    data_url = "data:image/png;base64," + base64.b64encode(imgs[1]).decode()
    one_json = client.post("/v1/models/tiny/classify", json={"image": data_url}).json()["results"]
    raw = [client.post("/v1/models/tiny/classify", content=d, headers=PNG).json()["results"][0] for d in imgs]
    assert len(multi) == 3
    assert [r["index"] for r in multi] == [r["index"] for r in as_json] == [r["index"] for r in raw]
    assert one_json[0]["index"] == raw[1]["index"]
    np.testing.assert_allclose([r["probability"] for r in multi], [r["probability"] for r in raw], rtol=1e-5)


def test_versions_are_addressable(client, model_dir):
    data = digits_png_bytes(1)
    for version in (1, 2):
        r = client.post(f"/v1/models/tiny/versions/{version}/classify?top_k=10", content=data, headers=PNG).json()
        assert r["version"] == version
        probs = _softmax(_reference(model_dir, "tiny", version, data, ["logits"])["logits"])[0]
        got = {t["index"]: t["probability"] for t in r["results"][0]["top_k"]}
        np.testing.assert_allclose([got[i] for i in range(10)], probs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", served_models())
def test_features_json_and_npy(client, model_dir, name):
    imgs = [digits_png_bytes(i) for i in (4, 5)]
    files = [("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(imgs)]
    layers = [layer["name"] for layer in client.get(f"/v1/models/{name}").json()["layers"]]
    stage = layers[-1]
    manifest_layer = client.get(f"/v1/models/{name}").json()["layers"][-1]
    as_json = client.post(f"/v1/models/{name}/features?layer={stage}", files=files).json()
    assert as_json["layer"] == stage and as_json["dim"] == manifest_layer["dim"]
    r = client.post("/v1/models/" + name + "/features", files=files, headers={"accept": "application/x-npy"})
    assert r.headers["content-type"] == "application/x-npy"
    emb = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert emb.dtype == np.float32 and emb.shape[0] == 2
    ref = np.concatenate([_reference(model_dir, name, None, d, ["embedding"])["embedding"] for d in imgs])
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-5)
    npy_q = client.post(f"/v1/models/{name}/features?format=npy&layer={stage}", files=files)
    np.testing.assert_allclose(np.load(io.BytesIO(npy_q.content)), np.array(as_json["features"]), rtol=1e-6)


@pytest.mark.parametrize("name", served_models())
def test_explain_json_png_overlay(client, name):
    data = digits_png_bytes(3)
    body = client.post(f"/v1/models/{name}/explain", content=data, headers=PNG).json()
    info = client.get(f"/v1/models/{name}").json()["explain"]
    res = body["results"][0]
    cam = np.array(res["cam"])
    assert cam.shape == tuple(info["cam_shape"]) and cam.min() >= 0 and cam.max() <= 1.0 + 1e-6
    assert res["target"]["index"] == res["prediction"]["index"]  # default: explain the predicted class
    other = (res["prediction"]["index"] + 1) % 10
    r = client.post(f"/v1/models/{name}/explain?format=png&target={other}", content=data, headers=PNG)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(r.content))
    assert png.size == (8, 8) and png.mode == "RGB"  # resized to the input image's size
    assert r.headers["x-striate-target-index"] == str(other)
    assert r.headers["x-striate-class-index"] == str(res["prediction"]["index"])
    big = io.BytesIO()
    Image.open(io.BytesIO(data)).resize((40, 30)).save(big, format="JPEG")
    r = client.post(
        f"/v1/models/{name}/explain?format=overlay", content=big.getvalue(), headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (40, 30)
    assert float(r.headers["x-striate-probability"]) > 0


def test_explain_target_by_label_changes_the_map(client):
    data = digits_png_bytes(3)
    a = client.post("/v1/models/tiny/explain?target=class_1", content=data, headers=PNG).json()["results"][0]
    b = client.post("/v1/models/tiny/explain?target=4", content=data, headers=PNG).json()["results"][0]
    assert a["target"]["index"] == 1 and b["target"]["index"] == 4
    assert not np.allclose(a["cam"], b["cam"])


def test_activations_png_json_npy(client, model_dir):
    data = digits_png_bytes(2)
    r = client.post("/v1/models/tiny/activations?layer=s1", content=data, headers=PNG)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    grid = Image.open(io.BytesIO(r.content))
    assert grid.size[0] > 48 * 2 and r.headers["x-striate-channels"] == "8/8"
    ref = _reference(model_dir, "tiny", None, data, ["s1_map"])["s1_map"]
    j = client.post("/v1/models/tiny/activations?layer=s1&format=json", content=data, headers=PNG).json()
    assert j["shape"] == [1, 8, 8, 8]
    np.testing.assert_allclose(np.array(j["maps"]), ref, rtol=1e-5, atol=1e-6)
    n = client.post("/v1/models/tiny/activations?layer=s2&format=npy", content=data, headers=PNG)
    assert np.load(io.BytesIO(n.content), allow_pickle=False).shape == (1, 16, 4, 4)
    few = client.post("/v1/models/tiny/activations?layer=s2&channels=4", content=data, headers=PNG)
    assert few.headers["x-striate-channels"] == "4/16"


def test_rgb_model_takes_grayscale_and_rgba(client):
    for mode in ("L", "RGBA", "P"):
        img = Image.new(mode, (30, 20))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        r = client.post("/v1/models/tinyrgb/classify", content=buf.getvalue(), headers=PNG)
        assert r.status_code == 200, (mode, r.text)
        assert len(r.json()["results"][0]["top_k"]) == 3


def test_health_ready_metrics_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and "tiny" in ready["models"]
    client.post("/v1/models/tiny/classify", content=digits_png_bytes(0), headers=PNG)
    text = client.get("/metrics").text
    assert (
        'striate_requests_total{endpoint="/v1/models/{name}/classify",method="POST",model="tiny",status="200"}' in text
    )
    assert "striate_batch_size_bucket" in text and "striate_queue_depth" in text
    assert "striate_request_duration_seconds_bucket" in text
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/models/{name}/classify",
        "/v1/models/{name}/features",
        "/v1/models/{name}/explain",
        "/v1/models/{name}/activations",
        "/v2/models/{name}/infer",
    ):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/models/{name}/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*", "application/json"} <= set(body)
    assert body["application/json"]["example"]["images"]


@pytest.mark.skipif("digits" not in served_models(), reason="the default bundle exported/digits/1 is not built yet")
def test_default_bundle_classifies_real_digits(client):
    """The embedded default model, served: most of 200 real sklearn digits come back right."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = client.get("/v1/models/digits").json()["labels"]
    idx = np.random.default_rng(0).choice(len(digits.target), 200, replace=False)
    files = [("f", (f"{i}.png", digits_png_bytes(int(i)), "image/png")) for i in idx]
    r = client.post("/v1/models/digits/classify?top_k=1", files=files)
    assert r.status_code == 200, r.text
    predicted = [labels[res["index"]] for res in r.json()["results"]]
    accuracy = np.mean([p == str(digits.target[i]) for p, i in zip(predicted, idx, strict=True)])
    assert accuracy > 0.9
