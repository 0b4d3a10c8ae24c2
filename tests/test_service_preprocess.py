"""Preprocessing parity: the service's tensors are training's eval tensors; EXIF and colour modes."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from service_fixtures import make_settings
from skimage import data as skdata

from service.images import Upload
from service.inference import Inference
from service.metrics import Metrics
from service.repository import Repository
from striate.manifest import Manifest

# Tolerance: none. The service and training call the same `striate.preprocess` code on the same
# decoded pixels, so the tensors are bit-identical (asserted with array_equal, not allclose).


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def repository(model_dir):
    repo = Repository(make_settings(model_dir), Metrics())
    repo.load()
    return repo


def _service_tensor(repository, name: str, data: bytes) -> np.ndarray:
    """The tensor the routes feed onnxruntime (Inference.decode), for one image."""
    inference = Inference(repository.settings)
    try:
        decoded = asyncio.run(inference.decode(repository.get(name), [Upload(data, "x")]))
    finally:
        inference.close()
    return decoded.tensor[0]


@pytest.mark.parametrize("name", ["tiny", "tinyrgb"])
def test_jpeg_tensor_equals_training_eval_transform(repository, name):
    transforms = pytest.importorskip("training.data.transforms")
    jpeg = _jpeg(Image.fromarray(skdata.astronaut()))
    spec = repository.get(name).manifest.preprocessing
    eval_tensor = transforms.EvalTransform(spec)(Image.open(io.BytesIO(jpeg))).numpy()
    service_tensor = _service_tensor(repository, name, jpeg)
    assert service_tensor.dtype == np.float32 and service_tensor.shape == eval_tensor.shape
    assert np.array_equal(service_tensor, eval_tensor)


def _features(url: str, model: str, data: bytes) -> np.ndarray:
    r = httpx.post(f"{url}/v1/models/{model}/features?format=npy", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return np.load(io.BytesIO(r.content), allow_pickle=False)


def test_exif_orientation_is_applied(server):
    photo = Image.fromarray(skdata.chelsea()).resize((90, 60))  # landscape, not symmetric
    upright = Image.open(io.BytesIO(_jpeg(photo)))
    upright.load()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    tagged = _jpeg(upright, exif=exif.tobytes())  # same pixels re-encoded: use the decoded ones below
    stored = Image.open(io.BytesIO(tagged))
    stored.load()
    displayed = stored.transpose(Image.Transpose.ROTATE_270)  # what a viewer shows for orientation 6
    a = _features(server, "tinyrgb", tagged)
    b = _features(server, "tinyrgb", _png(displayed))
    c = _features(server, "tinyrgb", _png(stored))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_colour_modes_convert_as_the_model_needs(server):
    digit = Image.open(io.BytesIO(_png(Image.fromarray(skdata.camera()).resize((8, 8)))))
    base = _features(server, "tiny", _png(digit))
    sixteen = Image.fromarray(np.asarray(digit, dtype=np.uint16) * 257)  # 16-bit, same values
    assert sixteen.mode.startswith("I;16")
    palette = digit.convert("RGB").quantize(256)
    gray_palette = Image.new("P", digit.size)
    gray_palette.putpalette([v for i in range(256) for v in (i, i, i)])
    gray_palette.putdata(list(digit.getdata()))
    np.testing.assert_array_equal(base, _features(server, "tiny", _png(sixteen)))
    np.testing.assert_array_equal(base, _features(server, "tiny", _png(gray_palette)))
    np.testing.assert_array_equal(base, _features(server, "tiny", _png(digit.convert("RGBA"))))
    assert _features(server, "tiny", _png(palette)).shape == base.shape

    rgb = Image.fromarray(skdata.astronaut()).resize((24, 32))
    rgb_base = _features(server, "tinyrgb", _png(rgb))
    rgba = rgb.convert("RGBA")
    np.testing.assert_array_equal(rgb_base, _features(server, "tinyrgb", _png(rgba)))
    gray = rgb.convert("L")
    np.testing.assert_array_equal(
        _features(server, "tinyrgb", _png(gray)), _features(server, "tinyrgb", _png(gray.convert("RGB")))
    )


def test_manifest_preprocessing_drives_the_tensor(repository):
    """Mean/std and size come from the manifest, never hard-coded: check the numbers by hand."""
    manifest: Manifest = repository.get("tinyrgb").manifest
    img = Image.new("RGB", (12, 16), (255, 0, 128))
    t = _service_tensor(repository, "tinyrgb", _png(img))
    spec = manifest.preprocessing
    assert t.shape == (3, 16, 12)
    expected = (np.array([255, 0, 128]) / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(t[:, 5, 5], expected, atol=1e-6)  # float32 arithmetic
