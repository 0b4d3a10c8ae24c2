"""Data: digits conversion, shapes, ImageFolder scanning and bad input, splits, transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from striate.errors import StriateError
from striate.manifest import Preprocessing
from striate.preprocess import preprocess
from training.config import TrainConfig
from training.data import (
    SHAPE_CLASSES,
    EvalTransform,
    TrainTransform,
    build_data,
    build_eval_dataset,
    digits_to_images,
    load_folder_source,
    load_shapes_source,
    stratified_split,
)
from training.data.splits import split_with_predefined


@pytest.fixture(scope="module")
def digits_splits():
    return build_data(TrainConfig(data="digits", input_size=32))


def write_digit_folder(root: Path, classes=("0", "1", "2"), per_class: int = 8) -> Path:
    """Real images: scikit-learn digits saved as 8x8 grayscale PNGs in root/<class>/."""
    bunch = load_digits()
    images = digits_to_images(bunch.images)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        members = np.flatnonzero(bunch.target == int(name))[:per_class]
        for i in members:
            Image.fromarray(images[i]).save(root / name / f"{i}.png")
    return root


# --- digits ------------------------------------------------------------------------------


def test_digits_conversion_is_value_times_255_over_16_rounded():
    values = np.arange(17, dtype=np.float64).reshape(1, 1, 17)
    out = digits_to_images(values)
    assert out.dtype == np.uint8
    assert out.ravel().tolist() == [int(np.floor(v * 255 / 16 + 0.5)) for v in range(17)]
    assert out.ravel()[0] == 0 and out.ravel()[-1] == 255 and out.ravel()[8] == 128  # 127.5 -> 128 (even)


def test_digits_eval_tensor_is_preprocess_of_the_pil_image(digits_splits):
    """The eval tensor equals preprocess() of the 8-bit PIL image, computed here independently."""
    bunch = load_digits()
    spec = digits_splits.preprocessing
    assert spec.color_mode == "L" and spec.resize_mode == "exact"
    assert tuple(spec.resize_size) == tuple(spec.crop_size) == (32, 32)
    for i in (0, 17, len(digits_splits.test) - 1):
        index = int(digits_splits.test.indices[i])
        pil = Image.fromarray(np.rint(bunch.images[index] * 255 / 16).astype(np.uint8), mode="L")
        expected = torch.from_numpy(preprocess(pil, spec))
        tensor, target = digits_splits.test[i]
        assert tensor.shape == (1, 32, 32) and tensor.dtype == torch.float32
        assert torch.equal(tensor, expected)
        assert target == bunch.target[index]


def test_digits_mean_std_come_from_the_training_split(digits_splits):
    spec = digits_splits.preprocessing
    bunch = load_digits()
    pixels = []
    for index in digits_splits.train.indices:
        pil = Image.fromarray(np.rint(bunch.images[index] * 255 / 16).astype(np.uint8), mode="L")
        pixels.append(np.asarray(pil.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64) / 255)
    stack = np.stack(pixels)
    assert spec.mean[0] == pytest.approx(stack.mean(), abs=1e-4)
    assert spec.std[0] == pytest.approx(stack.std(), abs=1e-4)
    # The normalised training images are roughly zero-mean, unit-variance.
    batch = torch.stack([digits_splits.test[i][0] for i in range(64)])
    assert abs(float(batch.mean())) < 0.3 and 0.7 < float(batch.std()) < 1.3


def test_digits_split_sizes_and_labels(digits_splits):
    assert digits_splits.classes == [str(d) for d in range(10)]
    sizes = len(digits_splits.train), len(digits_splits.val), len(digits_splits.test)
    assert sum(sizes) == 1797
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=10) and sizes[1] == pytest.approx(0.1 * 1797, abs=10)


# --- splits ------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_stratified():
    targets = np.repeat(np.arange(4), [50, 30, 100, 20])
    a = stratified_split(targets, 0.1, 0.2, seed=3)
    b = stratified_split(targets, 0.1, 0.2, seed=3)
    c = stratified_split(targets, 0.1, 0.2, seed=4)
    for part_a, part_b in zip(a, b, strict=True):
        assert np.array_equal(part_a, part_b)
    assert not np.array_equal(a.test, c.test)
    everything = np.concatenate(a)
    assert len(everything) == len(targets) and len(np.unique(everything)) == len(targets)
    for cls, n in enumerate([50, 30, 100, 20]):
        assert np.sum(targets[a.test] == cls) == round(0.2 * n)
        assert np.sum(targets[a.val] == cls) == round(0.1 * n)


def test_split_refuses_a_class_too_small_to_split():
    targets = np.array([0] * 10 + [1, 1])
    with pytest.raises(StriateError, match=r"class 'b' has only 2 image"):
        stratified_split(targets, 0.1, 0.2, seed=0, classes=["a", "b"])


def test_predefined_split_carves_val_from_train():
    targets = np.repeat(np.arange(2), 20)
    predefined = {"train": np.arange(0, 40, 2), "test": np.arange(1, 40, 2)}
    split = split_with_predefined(targets, predefined, 0.2, 0.2, seed=0)
    assert np.array_equal(split.test, predefined["test"])
    assert len(split.val) == 4 and set(split.val) | set(split.train) == set(predefined["train"])
    assert not set(split.val) & set(split.train)


# --- shapes ------------------------------------------------------------------------------


def test_shapes_are_deterministic_from_the_seed_and_balanced():
    a, b, c = load_shapes_source(5, seed=1), load_shapes_source(5, seed=1), load_shapes_source(5, seed=2)
    assert a.classes == list(SHAPE_CLASSES)
    assert a.arrays.shape == (15, 64, 64, 3) and a.arrays.dtype == np.uint8
    assert np.array_equal(a.arrays, b.arrays) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.arrays, c.arrays)
    assert np.bincount(a.targets).tolist() == [5, 5, 5]
    # Each image really has a bright shape on a dark background.
    for img in a.arrays:
        assert img.max() >= 150 and img.min() < 90


# --- transforms --------------------------------------------------------------------------


def _spec(mode: str = "L", size: int = 16) -> Preprocessing:
    n = 1 if mode == "L" else 3
    return Preprocessing(
        color_mode=mode, resize_size=(size, size), crop_size=(size, size), mean=(0.5,) * n, std=(0.25,) * n
    )


def test_train_transform_is_seeded_random_and_unaugmented_equals_eval():
    img = Image.fromarray(load_shapes_source(3, seed=0).arrays[0])
    spec = _spec("RGB", 32)
    aug = TrainTransform(spec, "shapes")
    torch.manual_seed(0)
    first = aug(img)
    torch.manual_seed(0)
    assert torch.equal(first, aug(img))
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert not torch.equal(first, aug(img))  # a different draw
    assert torch.equal(TrainTransform(spec, "none")(img), EvalTransform(spec)(img))


def test_folder_train_transform_crops_to_the_input_size():
    img = Image.new("RGB", (90, 60), (200, 10, 10))
    spec = Preprocessing(
        color_mode="RGB",
        resize_mode="shorter",
        resize_size=(37, 37),
        crop_size=(32, 32),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    out = TrainTransform(spec, "folder")(img)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out[0], torch.full((32, 32), (200 / 255 - 0.5) / 0.5), atol=1e-5)


# --- ImageFolder -------------------------------------------------------------------------


def test_folder_source_reads_classes_and_ignores_non_images(tmp_path):
    root = write_digit_folder(tmp_path / "data")
    (root / "README.txt").write_text("not a class")
    (root / "1" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    source = load_folder_source(root)
    assert source.classes == ["0", "1", "2"]
    assert len(source) == 24 and np.bincount(source.targets).tolist() == [8, 8, 8]
    img = source.image(0)
    assert img.size == (8, 8) and img.mode == "L"


def test_folder_with_corrupt_image_fails_or_skips(tmp_path):
    root = write_digit_folder(tmp_path / "data")
    bad = root / "2" / "broken.png"
    good_bytes = (root / "2").glob("*.png").__next__().read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 2])  # a truncated PNG
    garbage = root / "0" / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg at all")
    with pytest.raises(StriateError, match=r"corrupt image .*(broken\.png|garbage\.jpg)") as info:
        load_folder_source(root, on_bad_image="fail")
    assert "--on-bad-image skip" in str(info.value) and "\n" not in str(info.value)
    warnings: list[str] = []
    source = load_folder_source(root, on_bad_image="skip", warn=warnings.append)
    assert len(source) == 24
    assert sorted(Path(w.split()[3].rstrip(":")).name for w in warnings) == ["broken.png", "garbage.jpg"]
    assert str(bad) not in source.paths and str(garbage) not in source.paths


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(StriateError, match="data folder not found"):
        load_folder_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StriateError, match="has no class sub-folders"):
        load_folder_source(tmp_path / "empty")
    root = write_digit_folder(tmp_path / "data")
    (root / "7").mkdir()
    (root / "7" / "notes.txt").write_text("no images here")
    with pytest.raises(StriateError, match=r"class folder .*7 has no images"):
        load_folder_source(root)
    single = write_digit_folder(tmp_path / "single", classes=("0",))
    with pytest.raises(StriateError, match="needs 2 or more"):
        load_folder_source(single)


def test_folder_with_train_and_test_subfolders(tmp_path):
    write_digit_folder(tmp_path / "data" / "train", per_class=10)
    write_digit_folder(tmp_path / "data" / "test", per_class=3)
    config = TrainConfig(data="folder", data_dir=str(tmp_path / "data"), input_size=16)
    splits = build_data(config)
    assert splits.classes == ["0", "1", "2"]
    assert len(splits.test) == 9 and len(splits.val) == 3 and len(splits.train) == 27
    assert all("/test/" in splits.test.source.paths[i] for i in splits.test.indices)
    assert splits.preprocessing.color_mode == "RGB" and tuple(splits.preprocessing.crop_size) == (16, 16)
    x, y = splits.train[0]
    assert x.shape == (3, 16, 16) and y in (0, 1, 2)
    test = build_eval_dataset(config, splits.preprocessing, "test")
    assert np.array_equal(test.indices, splits.test.indices)
