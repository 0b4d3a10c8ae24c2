"""The shared preprocessing: decoding limits, mode conversion, resize/crop geometry, normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from striate.manifest import Preprocessing
from striate.preprocess import ImageDecodeError, decode_image, preprocess, to_color_mode

RGB_SPEC = Preprocessing(
    color_mode="RGB",
    resize_mode="shorter",
    resize_size=(8, 8),
    crop_size=(8, 8),
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_normalisation_is_exact_on_a_known_pixel() -> None:
    img = Image.new("RGB", (8, 8), (255, 0, 128))
    out = preprocess(img, RGB_SPEC)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [(1 - 0.5) / 0.25, (0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25], atol=1e-6)


def test_shorter_side_resize_then_centre_crop_keeps_the_middle() -> None:
    # A 16x32 (h x w) image, black at the left and right edges and white in the middle: shorter side
    # -> 8 gives 8x16 and the centre 8x8 crop lies inside the white; a left-aligned crop would not.
    arr = np.zeros((16, 32, 3), dtype=np.uint8)
    arr[:, 4:28] = 255
    out = preprocess(Image.fromarray(arr), RGB_SPEC)
    assert out.shape == (3, 8, 8)
    np.testing.assert_allclose(out, (1 - 0.5) / 0.25, atol=1e-5)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue()).size == (10, 20)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"definitely not an image", "not a recognised image"),
    ],
)
def test_bad_bytes_are_refused_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(payload)


def test_truncated_image_is_refused() -> None:
    data = _png(Image.effect_noise((64, 64), 50))
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit_stops_decompression_bombs_before_decoding() -> None:
    data = _png(Image.new("L", (1000, 1000)))
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(data, max_pixels=999_999)
    assert decode_image(data, max_pixels=1_000_000).size == (1000, 1000)


def test_sixteen_bit_grayscale_scales_to_eight_bits() -> None:
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    img = decode_image(_png(Image.fromarray(arr)))
    out = np.asarray(to_color_mode(img, "L"))
    assert out.dtype == np.uint8 and out[0, 0] == 0 and out[1, 1] == 255


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "LA"])
def test_every_common_mode_converts_to_rgb_and_l(mode: str) -> None:
    img = Image.new("RGB", (5, 7), (10, 200, 30)).convert(mode)
    assert to_color_mode(img, "RGB").mode == "RGB"
    assert to_color_mode(img, "L").mode == "L"
    assert preprocess(img, RGB_SPEC).shape == (3, 8, 8)


def test_palette_with_transparency_goes_through_rgba() -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    assert np.asarray(to_color_mode(img, "RGB"))[0, 0].tolist() == [255, 0, 0]
