"""Bad input gets a clear 4xx JSON error, never a 5xx, and the server keeps serving; API keys."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import tritonclient.http as tritonhttp
from PIL import Image
from service_fixtures import digits_png_bytes, make_settings, run_server
from tritonclient.utils import InferenceServerException

PNG = {"content-type": "image/png"}


def _jpeg(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _bomb() -> bytes:
    """A 7000x7000 PNG (49 Mpixel, over the 40 Mpixel default) that is only a few kB on the wire."""
    buf = io.BytesIO()
    Image.new("1", (7000, 7000)).save(buf, format="PNG")
    return buf.getvalue()


def _error(r: httpx.Response, status: int, code: str, *words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    for word in words:
        assert word in err["message"], err["message"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"this is not an image", ("not a recognised image",)),
        (_jpeg()[:300], ("truncated",)),
        (b"", ("empty",)),
    ],
    ids=["not-an-image", "truncated-jpeg", "empty"],
)
def test_bad_images_are_400(client, body, words):
    _error(client.post("/v1/models/tiny/classify", content=body, headers=PNG), 400, "invalid_image", *words)


def test_decompression_bomb_is_refused_by_pixel_limit(client):
    r = client.post("/v1/models/tiny/classify", content=_bomb(), headers=PNG)
    _error(r, 400, "invalid_image", "7000x7000", "40000000")


def test_request_shape_errors(client):
    good = digits_png_bytes(0)
    _error(
        client.post("/v1/models/tiny/classify", content=good, headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
        "text/plain",
    )
    _error(client.post("/v1/models/tiny/classify", json={"images": ["@@@"]}), 400, "bad_request", "base64")
    _error(client.post("/v1/models/tiny/classify", json={"pictures": []}), 400, "bad_request", "images")
    _error(
        client.post("/v1/models/tiny/classify", content=b"{", headers={"content-type": "application/json"}),
        400,
        "bad_request",
        "JSON",
    )
    _error(
        client.post("/v1/models/tiny/classify?top_k=0", content=good, headers=PNG), 422, "invalid_parameter", "top_k"
    )
    # classify reads top_k itself (DirectRoute): FastAPI's type and bounds, on both URL forms
    for url in ("/v1/models/tiny/classify?top_k=x", "/v1/models/tiny/versions/1/classify?top_k=1001"):
        _error(client.post(url, content=good, headers=PNG), 422, "invalid_parameter", "query.top_k: Input should be")
    assert (
        len(client.post("/v1/models/tiny/classify?top_k=2", content=good, headers=PNG).json()["results"][0]["top_k"])
        == 2
    )
    files = [("f", (f"{i}.png", good, "image/png")) for i in range(257)]
    _error(client.post("/v1/models/tiny/classify", files=files), 413, "payload_too_large", "256")


def test_unknown_model_version_layer_class(client):
    good = digits_png_bytes(0)
    _error(client.post("/v1/models/nope/classify", content=good, headers=PNG), 404, "not_found", "nope", "tiny")
    _error(client.post("/v1/models/tiny/versions/7/classify", content=good, headers=PNG), 404, "not_found", "[1, 2]")
    _error(client.post("/v1/models/tiny/versions/x/features", content=good, headers=PNG), 404, "not_found")
    _error(client.get("/v1/models/broken"), 404, "not_found", "failed to load")
    _error(
        client.post("/v1/models/tiny/features?layer=conv9", content=good, headers=PNG),
        422,
        "unprocessable",
        "conv9",
        "s1",
    )
    _error(
        client.post("/v1/models/tiny/activations?layer=embedding", content=good, headers=PNG),
        422,
        "unprocessable",
        "s1",
    )
    _error(client.post("/v1/models/tiny/explain?target=10", content=good, headers=PNG), 422, "unprocessable", "10")
    _error(client.post("/v1/models/tiny/explain?target=cat", content=good, headers=PNG), 422, "unprocessable", "cat")
    files = [("f", ("a.png", good, "image/png")), ("f", ("b.png", good, "image/png"))]
    _error(client.post("/v1/models/tiny/explain?format=png", files=files), 422, "unprocessable", "one image")
    _error(client.get("/v1/nothing"), 404, "not_found")


def test_one_bad_image_in_a_batch_names_it(client):
    files = [("f", ("ok.png", digits_png_bytes(0), "image/png")), ("f", ("bad.png", b"xx", "image/png"))]
    _error(client.post("/v1/models/tiny/classify", files=files), 400, "invalid_image", "image 1", "bad.png")


def test_v2_bad_tensors_are_400(server):
    c = tritonhttp.InferenceServerClient(server[len("http://") :])
    cases = [
        ("image", [2, 1, 8, 7], "FP32", np.float32, "expected [N, 1, 8, 8]"),
        ("image", [2, 1, 8, 8], "FP64", np.float64, "must be FP32"),
        ("pixels", [2, 1, 8, 8], "FP32", np.float32, "unknown input"),
    ]
    for name, shape, dtype, np_type, words in cases:
        inp = tritonhttp.InferInput(name, shape, dtype)
        inp.set_data_from_numpy(np.zeros(shape, dtype=np_type))
        with pytest.raises(InferenceServerException) as info:
            c.infer("tiny", [inp])
        assert info.value.status() == "400" and words in info.value.message(), info.value
    with pytest.raises(InferenceServerException) as info:
        c.get_model_metadata("nope")
    assert info.value.status() == "404"
    raw = httpx.post(
        f"{server}/v2/models/tiny/infer",
        json={"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 63}]},
    )
    assert raw.status_code == 400 and "63 values" in raw.json()["error"]
    raw = httpx.post(
        f"{server}/v2/models/tiny/infer",
        content=b'{"inputs": [{"name": "image", '
        b'"datatype": "FP32", "shape": [1, 1, 8, 8], "parameters": {"binary_data_size": 256}}]}',
        headers={"inference-header-content-length": "9999"},
    )
    assert raw.status_code == 400 and "outside the body" in raw.json()["error"]
    raw = httpx.post(f"{server}/v2/models/tiny/infer", content=b"nonsense")
    assert raw.status_code == 400 and "JSON" in raw.json()["error"]


def test_server_keeps_serving_after_bad_input(client):
    for body in (b"junk", _jpeg()[:100], _bomb()):
        assert client.post("/v1/models/tiny/classify", content=body, headers=PNG).status_code == 400
    assert (
        client.post("/v1/models/tiny/classify", content=_jpeg(), headers={"content-type": "image/jpeg"}).status_code
        == 200
    )


@pytest.fixture(scope="module")
def locked(model_dir) -> str:
    with run_server(make_settings(model_dir, api_key="s3cret", max_body_bytes=4096)) as url:
        yield url


def test_api_key_guards_everything_but_health(locked):
    with httpx.Client(base_url=locked) as c:
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert c.get(path).status_code == 200, path
        for path in ("/v1/models", "/v1/models/tiny", "/metrics", "/v2", "/v2/models/tiny"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert c.get("/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/metrics", headers={"x-api-key": "s3cret"}).status_code == 200
        for url in ("/v1/models/tiny/classify", "/v1/models/nope/classify?top_k=0"):  # the key comes first
            _error(c.post(url, content=digits_png_bytes(0), headers=PNG), 401, "unauthorized", "API key")
        r = c.post("/v2/models/tiny/infer", json={"inputs": []})
        assert r.status_code == 401 and isinstance(r.json()["error"], str)
    triton = tritonhttp.InferenceServerClient(locked[len("http://") :])
    assert triton.get_model_metadata("tiny", headers={"Authorization": "Bearer s3cret"})["name"] == "tiny"


def test_body_limit_is_413_naming_the_limit(locked):
    auth = {"authorization": "Bearer s3cret"}
    big = _jpeg((300, 300))
    assert len(big) > 4096
    r = httpx.post(f"{locked}/v1/models/tiny/classify", content=big, headers=PNG | auth)
    _error(r, 413, "payload_too_large", "4096")

    def chunks():
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = httpx.post(f"{locked}/v1/models/tiny/classify", content=chunks(), headers=PNG | auth)  # no Content-Length
    _error(r, 413, "payload_too_large", "4096")
    b64 = {"images": [base64.b64encode(big).decode()]}
    r = httpx.post(f"{locked}/v2/models/tiny/infer", json=b64, headers=auth)
    assert r.status_code == 413 and "4096" in r.json()["error"]
    assert (
        httpx.post(f"{locked}/v1/models/tiny/classify", content=digits_png_bytes(0), headers=PNG | auth).status_code
        == 200
    )


@pytest.mark.parametrize("segment", ["³", "١", "٣", "²", "1.0", "01", "-1", "0"])
def test_version_segments_are_strict_ascii_numbers(client, server, segment):
    """Unicode digits were a 500 ("³": int() fails) or silently read as a number ("١" -> 1)."""
    good = digits_png_bytes(0)
    for r in (
        client.post(f"/v1/models/tiny/versions/{segment}/classify", content=good, headers=PNG),
        client.get(f"/v1/models/tiny/versions/{segment}"),
    ):
        _error(r, 404, "not_found", "no version", "[1, 2]")
    for path in (f"/v2/models/tiny/versions/{segment}", f"/v2/models/tiny/versions/{segment}/ready"):
        r = client.get(path)
        assert r.status_code == 404 and "no version" in r.json()["error"], (path, r.text)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}]}
    r = client.post(f"/v2/models/tiny/versions/{segment}/infer", json=body)
    assert r.status_code == 404 and "no version" in r.json()["error"], r.text
    assert client.get("/v1/models/tiny/versions/1").status_code == 200  # the connection still serves


def test_unicode_version_folders_are_refused_at_load(model_dir, tmp_path):
    import shutil

    from service.metrics import Metrics
    from service.repository import Repository

    root = tmp_path / "repo"
    shutil.copytree(model_dir / "tiny" / "1", root / "tiny" / "1")
    shutil.copytree(model_dir / "tiny" / "1", root / "tiny" / "١")
    repo = Repository(make_settings(root), Metrics())
    repo.load()
    assert sorted(repo.models["tiny"]) == [1]
    assert "ASCII digits" in {b.version: b.error for b in repo.broken}["١"]


def _relabel(bundle, labels: int) -> None:
    import json

    path = bundle / "manifest.json"
    doc = json.loads(path.read_text())
    doc["labels"] = doc["labels"][:labels]
    path.write_text(json.dumps(doc))


def test_fewer_labels_than_logits_is_refused_at_load(model_dir, tmp_path):
    """It used to load and then answer 500 (IndexError in top-k) to every classify and explain."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(model_dir / "tiny" / "1", root / "tiny" / "1")
    shutil.copytree(model_dir / "tiny" / "2", root / "tiny" / "2")
    _relabel(root / "tiny" / "2", 9)
    with run_server(make_settings(root)) as url, httpx.Client(base_url=url) as c:
        listing = c.get("/v1/models").json()
        assert listing["models"][0]["versions"] == [1]
        (broken,) = listing["broken"]
        assert broken["version"] == "2" and "9 labels" in broken["error"] and "10 logits" in broken["error"]
        r = c.post("/v1/models/tiny/versions/2/classify", content=digits_png_bytes(0), headers=PNG)
        _error(r, 404, "not_found", "9 labels")
        assert c.post("/v1/models/tiny/classify", content=digits_png_bytes(0), headers=PNG).status_code == 200
