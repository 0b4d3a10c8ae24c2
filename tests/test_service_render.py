"""Pictures the service draws: colour maps, where the cam sits on the image, activation grids."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.render import activation_grid_png, cam_on_image, heatmap_png, jet, model_view_box, overlay_png, viridis
from striate.manifest import Preprocessing

IMAGENET = Preprocessing(
    color_mode="RGB",
    resize_mode="shorter",
    resize_size=(256, 256),
    crop_size=(224, 224),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)
EXACT = Preprocessing(color_mode="L", resize_size=(8, 8), crop_size=(8, 8), mean=(0.5,), std=(0.5,))


def test_colour_maps_known_values():
    np.testing.assert_array_equal(jet(np.array([0.0, 0.5, 1.0])), [[0, 0, 128], [128, 255, 128], [128, 0, 0]])
    v = viridis(np.array([0.0, 1.0]))
    np.testing.assert_array_equal(v, [[68, 1, 84], [253, 231, 37]])


def test_model_view_box_follows_resize_and_crop():
    # 512x256 (W x H): shorter side 256 -> stays 512x256; centre crop 224 -> x 144..368, y 16..240
    assert model_view_box((512, 256), IMAGENET) == (144.0, 16.0, 368.0, 240.0)
    # 1024x512: scale 0.5, so the same box doubled in original pixels
    assert model_view_box((1024, 512), IMAGENET) == (288.0, 32.0, 736.0, 480.0)
    assert model_view_box((30, 20), EXACT) == (0.0, 0.0, 30.0, 20.0)


def test_cam_is_placed_where_the_model_looked():
    cam = np.ones((7, 7), dtype=np.float32)
    placed = cam_on_image(cam, (512, 256), IMAGENET)
    assert placed.shape == (256, 512)
    assert placed[:, :144].max() == 0 and placed[:, 368:].max() == 0 and placed[:16].max() == 0
    assert placed[16:240, 144:368].min() == 1.0
    # A map hot in its top-left cell only: the heat lands in the top-left of the box, nowhere else.
    corner = np.zeros((7, 7), dtype=np.float32)
    corner[0, 0] = 1.0
    placed = cam_on_image(corner, (512, 256), IMAGENET)
    y, x = np.unravel_index(placed.argmax(), placed.shape)
    assert 16 <= y < 16 + 32 and 144 <= x < 144 + 32  # one cam cell is 224 / 7 = 32 pixels
    assert placed[16 + 64 :, :].max() == 0 and placed[:, 144 + 64 :].max() == 0


def test_heatmap_and_overlay_pngs_have_the_image_size():
    cam = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    heat = Image.open(io.BytesIO(heatmap_png(cam, (40, 30), EXACT)))
    assert heat.size == (40, 30) and heat.mode == "RGB"
    photo = Image.new("RGB", (40, 30), (10, 200, 30))
    over = np.asarray(Image.open(io.BytesIO(overlay_png(cam, photo, EXACT, alpha=0.0))))
    np.testing.assert_array_equal(over, np.asarray(photo))  # alpha 0: the photo unchanged
    full = np.asarray(Image.open(io.BytesIO(overlay_png(cam, photo, EXACT, alpha=1.0))))
    np.testing.assert_array_equal(full, np.asarray(heat))  # alpha 1: the heatmap


def test_activation_grid_layout():
    maps = np.random.default_rng(0).random((10, 6, 6)).astype(np.float32)
    maps[3] = 0.0  # a dead channel must not divide by zero
    grid = Image.open(io.BytesIO(activation_grid_png(maps, min_tile=12, pad=2)))
    # 10 channels -> 4 columns x 3 rows of 12x12 tiles with 2-pixel gaps
    assert grid.size == (4 * 14 + 2, 3 * 14 + 2)
    tile = np.asarray(grid)[2:14, 2 + 3 * 14 : 14 + 3 * 14]
    assert (tile == tile[0, 0]).all()  # the dead channel is one flat colour
