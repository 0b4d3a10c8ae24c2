"""The one typed description of a training run. Every default is stated here, once.

The CLI (`striate train`) leaves its options unset and fills them from these defaults, so a
resumed run keeps the values it was started with unless the user overrides them explicitly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from striate.errors import StriateError

DataName = Literal["digits", "shapes", "folder"]

# The recipe options turned off: what a run recorded before they existed trained with.
RECIPE_OFF: dict[str, Any] = {
    "ema": False,
    "mixup": 0.0,
    "cutmix": 0.0,
    "trivial_augment": False,
    "random_erasing": 0.0,
    "amp": False,
    "channels_last": False,
    "compile": False,
}


@dataclass
class TrainConfig:
    # --- model ---
    arch: str = "resnet18"
    input_size: int | None = None  # square input side; None: 32 for digits/shapes, 224 for folders
    base_width: int | None = None  # None: the architecture's own default width
    # --- data ---
    data: DataName = "digits"
    data_dir: str | None = None  # ImageFolder root (only for data="folder")
    color_mode: Literal["L", "RGB"] | None = None  # None: "L" for digits, "RGB" otherwise
    val_fraction: float = 0.1  # per class, stratified
    test_fraction: float = 0.2  # per class, stratified
    data_seed: int = 0  # seeds the split and the generated shapes; independent of --seed
    augment: bool = True
    on_bad_image: Literal["skip", "fail"] = "fail"
    shapes_per_class: int = 200  # size of the generated shapes dataset
    # --- optimisation ---
    epochs: int = 10
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3  # peak learning rate, reached after the warmup
    min_lr_ratio: float = 0.01  # the cosine schedule ends at lr * min_lr_ratio
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    momentum: float = 0.9  # SGD only (Nesterov)
    label_smoothing: float = 0.0
    # --- recipe: each option is recorded in the checkpoint; defaults measured by bench/recipe_bench.py ---
    ema: bool = False  # evaluate, keep and export an exponential moving average of the weights
    ema_decay: float = 0.99  # per step, after a warmup of (1 + n) / (10 + n)
    mixup: float = 0.0  # MixUp alpha (Beta(alpha, alpha) mixing weight); 0: off
    cutmix: float = 0.0  # CutMix alpha; with mixup too, each batch picks one of the two
    trivial_augment: bool = False  # TrivialAugmentWide on each training image
    random_erasing: float = 0.0  # probability of erasing a random rectangle of a training image
    amp: bool = False  # mixed precision (CUDA only; off on CPU)
    channels_last: bool = False  # NHWC memory format (CUDA only; off on CPU)
    compile: bool = False  # torch.compile the training forward (opt-in: compiling takes a while)
    # --- run ---
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 0  # DataLoader worker processes; 0 loads in the main process
    out: str | None = None  # run directory; None: runs/<arch>-<data>-<timestamp>
    report: bool = True  # write the PNG/HTML report after training (training.analysis.report)
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) while training

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must lie in [0, 1)"),
            (
                0 <= self.val_fraction < 1 and 0 < self.test_fraction < 1,
                "--val-fraction must lie in [0, 1) and --test-fraction in (0, 1)",
            ),
            (self.val_fraction + self.test_fraction < 1, "val and test fractions leave no training data"),
            (self.input_size is None or self.input_size >= 8, "--input-size must be at least 8"),
            (self.base_width is None or self.base_width >= 1, "--base-width must be positive"),
            (0 < self.ema_decay < 1, f"--ema-decay must lie in (0, 1), got {self.ema_decay}"),
            (self.mixup >= 0 and self.cutmix >= 0, "--mixup and --cutmix are Beta alphas: >= 0 (0 turns them off)"),
            (0 <= self.random_erasing <= 1, f"--random-erasing is a probability, got {self.random_erasing}"),
            (self.shapes_per_class >= 3, "--shapes-per-class must be at least 3"),
            (self.data != "folder" or bool(self.data_dir), "--data folder needs --data-dir DIR"),
            (self.data == "folder" or not self.data_dir, f"--data-dir only applies to folders, not {self.data}"),
        ]
        for ok, message in checks:
            if not ok:
                raise StriateError(message)

    @property
    def resolved_input_size(self) -> int:
        if self.input_size is not None:
            return self.input_size
        return 224 if self.data == "folder" else 32

    @property
    def resolved_color_mode(self) -> str:
        if self.color_mode is not None:
            return self.color_mode
        return "L" if self.data == "digits" else "RGB"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a (possibly older) checkpoint's config, ignoring keys this version lacks.

        A recipe option an older run does not record did not exist then: it was off.
        """
        known = {f.name for f in fields(cls)}
        return cls(**{**RECIPE_OFF, **{k: v for k, v in values.items() if k in known}})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def default(cls, name: str) -> Any:
        return next(f.default for f in fields(cls) if f.name == name)
