"""Transfer-learning benchmark: what ImageNet weights buy on small tasks, at equal budget.

    .venv/bin/python bench/pretrained_probe.py            # digits and shapes (several minutes on CPU)
    .venv/bin/python bench/pretrained_probe.py --quick    # fewer images and epochs

Per task (scikit-learn digits upscaled to the input size; generated shapes), same split (the
engine's stratified split, data seed 0), same train subset, same test split:
1. linear probe: logistic regression (scikit-learn, same settings) on
   a. the frozen EfficientNet-Lite0 ImageNet embedding (1280-d), vs
   b. the raw preprocessed pixels the backbone sees (same images, same head);
2. fine-tuning EfficientNet-Lite0 from ImageNet vs the same architecture from random init:
   `training.finetune` (the engine), same epochs, schedule, lr, batch and seed; the pretrained body
   learns at lr * body_lr_mult, the scratch body at lr.
Results: printed as a table and written to bench/results/pretrained_probe.json.
One torch thread (this machine's cores are shared; more threads made everything slower under load).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.data.datasets import DataSplits, ImageDataset  # noqa: E402
from training.finetune import FinetuneConfig, build_finetune_data, finetune  # noqa: E402
from training.models import create_model  # noqa: E402

RESULTS = REPO / "bench" / "results" / "pretrained_probe.json"


def subset(splits: DataSplits, n_train: int, seed: int = 0) -> DataSplits:
    rng = np.random.default_rng(seed)
    train = splits.train
    keep = np.sort(rng.choice(len(train.indices), min(n_train, len(train.indices)), replace=False))
    return replace(splits, train=ImageDataset(train.source, train.indices[keep], train.transform))


def eval_tensors(ds: ImageDataset) -> tuple[torch.Tensor, np.ndarray]:
    """The eval-preprocessed images (no augmentation), as the probe sees them."""
    from training.data.transforms import EvalTransform

    tf = EvalTransform(ds.transform.spec)
    x = torch.stack([tf(ds.source.image(int(i))) for i in ds.indices])
    return x, ds.targets


@torch.no_grad()
def embed(model: torch.nn.Module, x: torch.Tensor, batch: int = 64) -> np.ndarray:
    chunks = [x[i : i + batch] for i in range(0, len(x), batch)]
    out = [model.forward_head(model.forward_features(c), pre_logits=True) for c in chunks]
    return torch.cat(out).numpy()


def logreg(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def probe_rows(task: str, cfg: FinetuneConfig, n_train: int) -> list[dict]:
    splits = subset(build_finetune_data(cfg), n_train)
    tr_x, tr_y = eval_tensors(splits.train)
    te_x, te_y = eval_tensors(splits.test)
    model = create_model(
        "efficientnet_lite0", weights="imagenet", in_chans=tr_x.shape[1], input_size=cfg.resolved_input_size
    ).eval()
    start = time.perf_counter()
    feats_tr, feats_te = embed(model, tr_x), embed(model, te_x)
    t_embed = time.perf_counter() - start
    rows = [
        {
            "task": task,
            "method": "logreg on frozen efficientnet_lite0 ImageNet embedding",
            "dims": feats_tr.shape[1],
            "test_acc": logreg(feats_tr, tr_y, feats_te, te_y),
            "seconds": round(t_embed, 1),
        },
        {
            "task": task,
            "method": "logreg on raw preprocessed pixels",
            "dims": int(np.prod(tr_x.shape[1:])),
            "test_acc": logreg(tr_x.flatten(1).numpy(), tr_y, te_x.flatten(1).numpy(), te_y),
            "seconds": 0.0,
        },
    ]
    return rows


def finetune_rows(task: str, cfg: FinetuneConfig, n_train: int, out: Path) -> list[dict]:
    rows = []
    for label, weights in (("fine-tuned from ImageNet", "imagenet"), ("same architecture from scratch", None)):
        run_cfg = replace(cfg, weights=weights, mode="finetune", out=str(out / f"{task}-{weights or 'scratch'}"))
        data = subset(build_finetune_data(run_cfg), n_train)
        start = time.perf_counter()
        result = finetune(run_cfg, data=data, progress=False)
        rows.append(
            {
                "task": task,
                "method": f"efficientnet_lite0 {label} ({cfg.epochs} epochs)",
                "dims": None,
                "test_acc": float(result.test_metrics["accuracy"]),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", default="digits,shapes")
    parser.add_argument("--input-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_train = 200 if args.quick else 500
    epochs = 2 if args.quick else 4
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="striate-probe-") as tmp:
        for task in args.tasks.split(","):
            cfg = FinetuneConfig(
                arch="efficientnet_lite0",
                data=task,
                input_size=args.input_size,
                epochs=epochs,
                batch_size=32,
                lr=2e-3,
                body_lr_mult=0.5,
                warmup_epochs=0.5,
                report=False,
                shapes_per_class=200,
                color_mode="RGB",
            )
            rows += probe_rows(task, cfg, n_train)
            rows += finetune_rows(task, cfg, n_train, Path(tmp))
    width = max(len(r["method"]) for r in rows)
    print(f"\ntrain images per task: {n_train}; input {args.input_size}px RGB; test split of each task\n")
    print(f"{'task':<7} {'method':<{width}} {'test acc':>8} {'seconds':>8}")
    for r in rows:
        print(f"{r['task']:<7} {r['method']:<{width}} {r['test_acc']:>8.3f} {r['seconds']:>8.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"n_train": n_train, "epochs": epochs, "input_size": args.input_size, "quick": args.quick, "rows": rows},
            indent=2,
        )
        + "\n"
    )
    print(f"\n-> {RESULTS}")


if __name__ == "__main__":
    main()
