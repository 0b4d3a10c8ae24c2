"""The training loop: a real short run that learns, the run directory, checkpoints, exact resume."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from striate.errors import StriateError
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.data import build_eval_dataset
from training.engine import lr_at, train
from training.evaluate import classification_metrics, format_metrics, predict


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machine is shared: train on one thread (also makes timings irrelevant)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(tmp_path, name: str, **overrides) -> TrainConfig:
    values = {
        "arch": "lenet5",
        "data": "shapes",
        "shapes_per_class": 30,
        "input_size": 16,
        "epochs": 2,
        "batch_size": 16,
        "lr": 3e-3,
        "seed": 7,
        "report": False,
        "out": str(tmp_path / name),
    }
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A real, short training run: lenet5 on the digits at 16x16, 3 epochs."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    config = TrainConfig(
        arch="lenet5",
        data="digits",
        input_size=16,
        epochs=3,
        batch_size=32,
        lr=5e-3,
        seed=0,
        report=False,
        out=str(out),
    )
    return train(config, progress=False)


def test_lr_schedule_warms_up_then_follows_a_cosine():
    lrs = [lr_at(s, total_steps=100, warmup_steps=10, peak_lr=1.0, min_lr=0.01) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.01 + 0.5 * 0.99 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:101]))
    assert lrs[100:] == [0.01] * 10


def test_short_digits_run_learns(digits_run):
    assert digits_run.test_metrics["accuracy"] > 0.8  # chance is 0.1
    history = digits_run.history
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert digits_run.best_val_acc == max(row["val_acc"] for row in history)


def test_run_directory_layout(digits_run):
    run_dir = digits_run.run_dir
    for name in ("best.pt", "last.pt", "history.json", "metrics.json", "config.json"):
        assert (run_dir / name).is_file(), name
    history = json.loads((run_dir / "history.json").read_text())
    assert set(history[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["labels"] == [str(d) for d in range(10)]
    assert len(metrics["precision"]) == len(metrics["recall"]) == 10
    assert sum(map(sum, metrics["confusion"])) == metrics["count"] == 359
    assert metrics["accuracy"] == pytest.approx(sum(metrics["confusion"][i][i] for i in range(10)) / 359)
    assert json.loads((run_dir / "config.json").read_text())["arch"] == "lenet5"


def test_checkpoint_is_plain_data_and_rebuilds_the_model(digits_run):
    raw = torch.load(digits_run.run_dir / "best.pt", map_location="cpu", weights_only=True)
    assert raw["arch"] == "lenet5" and raw["labels"] == [str(d) for d in range(10)]
    assert raw["arch_kwargs"] == {"num_classes": 10, "in_chans": 1, "input_size": 16}
    assert raw["preprocessing"]["color_mode"] == "L" and raw["config"]["seed"] == 0
    assert raw["train_state"] == {}  # best.pt carries weights only
    assert raw["metrics"]["test_acc"] == pytest.approx(digits_run.test_metrics["accuracy"])
    assert set(torch.load(digits_run.run_dir / "last.pt", weights_only=True)["train_state"]) >= {
        "optimizer",
        "step",
        "best_val_acc",
        "history",
    }

    ckpt = load_checkpoint(digits_run.run_dir / "best.pt")
    model = ckpt.build_model()
    config = TrainConfig.from_dict(ckpt.config)
    test = build_eval_dataset(config, ckpt.preprocessing, "test")
    loader = torch.utils.data.DataLoader(test, batch_size=128)
    logits, targets = predict(model, loader, torch.device("cpu"))
    metrics = classification_metrics(targets, logits.argmax(1), ckpt.labels)
    assert metrics["accuracy"] == pytest.approx(digits_run.test_metrics["accuracy"])
    text = format_metrics(metrics)
    assert "test accuracy" in text and "confusion matrix" in text


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    straight = train(tiny(tmp_path, "straight", epochs=3), progress=False)

    class Crash(Exception):
        pass

    def crash_after_first_epoch(row):
        if row["epoch"] == 1:
            raise Crash

    with pytest.raises(Crash):
        train(tiny(tmp_path, "resumed", epochs=3), progress=False, on_epoch_end=crash_after_first_epoch)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt").epoch == 1
    resumed = train(tiny(tmp_path, "resumed", epochs=3), resume=tmp_path / "resumed", progress=False)

    a = load_checkpoint(straight.run_dir / "last.pt")
    b = load_checkpoint(resumed.run_dir / "last.pt")
    assert a.epoch == b.epoch == 3
    for key, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[key]), key
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in straight.history]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history]
    assert a.train_state["step"] == b.train_state["step"]
    assert straight.test_metrics["confusion"] == resumed.test_metrics["confusion"]


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    a = train(tiny(tmp_path, "a", epochs=1), progress=False)
    b = train(tiny(tmp_path, "b", epochs=1), progress=False)
    c = train(tiny(tmp_path, "c", epochs=1, seed=8), progress=False)
    wa, wb, wc = (load_checkpoint(r.run_dir / "last.pt").state_dict for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_refuses_to_overwrite_or_mis_resume(tmp_path):
    train(tiny(tmp_path, "run", epochs=1), progress=False)
    with pytest.raises(StriateError, match="already holds a run"):
        train(tiny(tmp_path, "run", epochs=1), progress=False)
    with pytest.raises(StriateError, match="already trained 1 of 1 epochs"):
        train(tiny(tmp_path, "run", epochs=1), resume=tmp_path / "run", progress=False)
    with pytest.raises(StriateError, match="is a lenet5, not a resnet18"):
        train(tiny(tmp_path, "run", arch="resnet18", epochs=2), resume=tmp_path / "run", progress=False)
    with pytest.raises(StriateError, match="holds no training state"):
        train(tiny(tmp_path, "run", epochs=2), resume=tmp_path / "run" / "best.pt", progress=False)
    with pytest.raises(StriateError, match="unknown architecture 'lenet6'"):
        train(tiny(tmp_path, "other", arch="lenet6"), progress=False)


# --------------------------------------------------------------------------------------------
# Reproducibility and the recipe options


def test_same_seed_same_thread_count_gives_bit_identical_weights(tmp_path):
    """The README's promise: same seed and same thread count, same weights (here on two threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [train(tiny(tmp_path, name, epochs=1, arch="resnet18", base_width=4), progress=False) for name in "ab"]
    finally:
        torch.set_num_threads(before)
    wa, wb = (load_checkpoint(r.run_dir / "last.pt").state_dict for r in runs)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_deterministic_turns_on_torchs_deterministic_algorithms_while_training(tmp_path):
    seen = []
    config = tiny(tmp_path, "det", epochs=1, deterministic=True)
    train(config, progress=False, on_epoch_end=lambda row: seen.append(torch.are_deterministic_algorithms_enabled()))
    assert seen == [True]
    assert not torch.are_deterministic_algorithms_enabled()  # the previous setting is back
    assert load_checkpoint(tmp_path / "det" / "last.pt").config["deterministic"] is True


def test_ema_weights_are_evaluated_saved_and_resumed_exactly(tmp_path):
    straight = train(tiny(tmp_path, "straight", epochs=3, ema=True), progress=False)
    last = load_checkpoint(straight.run_dir / "last.pt")
    assert last.config["ema"] is True and last.train_state["ema_updates"] == last.train_state["step"]
    raw = last.train_state["model"]  # the weights the optimizer trains
    assert raw.keys() == last.state_dict.keys()
    assert not all(torch.equal(raw[k], last.state_dict[k]) for k in raw)  # the checkpoint's own are the EMA

    # the test metrics are those of best.pt's (EMA) weights
    best = load_checkpoint(straight.run_dir / "best.pt")
    test = build_eval_dataset(TrainConfig.from_dict(best.config), best.preprocessing, "test")
    logits, targets = predict(best.build_model(), torch.utils.data.DataLoader(test, batch_size=64), torch.device("cpu"))
    assert (
        classification_metrics(targets, logits.argmax(1), best.labels)["confusion"]
        == straight.test_metrics["confusion"]
    )

    class Crash(Exception):
        pass

    def crash(row):
        if row["epoch"] == 1:
            raise Crash

    with pytest.raises(Crash):
        train(tiny(tmp_path, "resumed", epochs=3, ema=True), progress=False, on_epoch_end=crash)
    resumed = train(tiny(tmp_path, "resumed", epochs=3, ema=True), resume=tmp_path / "resumed", progress=False)
    other = load_checkpoint(resumed.run_dir / "last.pt")
    for key in last.state_dict:
        assert torch.equal(last.state_dict[key], other.state_dict[key]), key
        assert torch.equal(raw[key], other.train_state["model"][key]), key


def test_mixup_cutmix_trivial_augment_and_erasing_train_and_are_recorded(tmp_path):
    options = {"mixup": 0.2, "cutmix": 1.0, "trivial_augment": True, "random_erasing": 0.5}
    result = train(tiny(tmp_path, "recipe", epochs=2, **options), progress=False)
    config = load_checkpoint(result.run_dir / "best.pt").config
    assert {k: config[k] for k in options} == options
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    plain = train(tiny(tmp_path, "plain", epochs=2), progress=False)
    assert [r["train_loss"] for r in result.history] != [r["train_loss"] for r in plain.history]


def test_recipe_augmentations_change_the_image_and_follow_the_seed():
    from training.data import build_data

    data = build_data(TrainConfig(data="shapes", shapes_per_class=10, input_size=16, trivial_augment=True))
    erasing = build_data(TrainConfig(data="shapes", shapes_per_class=10, input_size=16, random_erasing=1.0))
    plain = build_data(TrainConfig(data="shapes", shapes_per_class=10, input_size=16, augment=False))

    def sample(splits, seed):
        torch.manual_seed(seed)
        return torch.stack([splits.train[i][0] for i in range(8)])

    assert torch.equal(sample(data, 1), sample(data, 1))
    assert not torch.equal(sample(data, 1), sample(data, 2))
    erased = sample(erasing, 3)
    assert erased.shape == sample(plain, 3).shape == (8, 3, 16, 16)
    # random erasing with p=1 writes a zero rectangle into every image
    assert all(int((img == 0).all(0).sum()) > 0 for img in erased)


def test_amp_and_channels_last_on_cpu_say_so_and_stay_off(tmp_path, capsys):
    result = train(tiny(tmp_path, "amp", epochs=1, amp=True, channels_last=True, device="cpu"), progress=False)
    err = capsys.readouterr().err
    assert "--amp and --channels-last apply on CUDA only" in err and "float32" in err
    plain = train(tiny(tmp_path, "fp32", epochs=1, device="cpu"), progress=False)
    wa, wb = (load_checkpoint(r.run_dir / "last.pt").state_dict for r in (result, plain))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # trained exactly as float32 NCHW
    assert load_checkpoint(result.run_dir / "last.pt").config["amp"] is True  # recorded as asked


def test_configs_of_runs_older_than_the_recipe_read_as_recipe_off():
    from training.config import RECIPE_OFF

    config = TrainConfig.from_dict({"arch": "lenet5", "epochs": 3})
    assert {k: getattr(config, k) for k in RECIPE_OFF} == RECIPE_OFF
