"""Transfer learning from a pretrained backbone: linear probe, MLP head, or fine-tuning.

- probe: the pretrained body is frozen (eval mode: BatchNorm keeps its ImageNet statistics) and
  only a new linear classifier is trained on its pooled embedding;
- mlp: the same frozen body with a new hidden layer (Linear, ReLU, Dropout) before the classifier;
- finetune: the new head plus the body (all of it, or only its last N stages); the body learns at
  `lr * body_lr_mult` so the pretrained features move slowly while the new head learns fast.

Fine-tuning is another way of building the run's parts (model, freeze policy, optimizer with
per-group learning rates); training them is the engine's (`training.engine.Trainer`): schedule,
DDP, run directory, best/last checkpoints, test metrics and report. Checkpoints are ordinary
Striate checkpoints of the backbone architecture (without the pretrained weights reference), so
`striate export` works on them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from striate.errors import StriateError
from striate.manifest import Preprocessing

from . import distributed as dist_utils
from .checkpoint import Checkpoint, current_versions, save_checkpoint
from .config import TrainConfig
from .data.datasets import DataSplits, build_data
from .data.transforms import fixed_size_spec
from .engine import ReportHook, TrainResult, run_training
from .models import StriateModel, create_model
from .models.backbones import backbone_preprocessing, imagenet_labels, resolve_backbone_name
from .parts import TrainParts, assemble, make_optimizer, resumed_model, seed_everything

Mode = Literal["probe", "mlp", "finetune"]
MODES = ("probe", "mlp", "finetune")


@dataclass
class FinetuneConfig(TrainConfig):
    """A TrainConfig whose `arch` is a backbone, plus the transfer-learning policy."""

    arch: str = "efficientnet_lite0"
    weights: str | None = "imagenet"  # torchvision enum name, "imagenet", a local file, or None (scratch)
    mode: Mode = "finetune"
    unfreeze_stages: int | None = None  # finetune: train only the last N stages (None: the whole body)
    body_lr_mult: float = 0.1  # body learning rate = lr * body_lr_mult (pretrained parts only)
    head_hidden: int | None = None  # hidden width of the MLP head (mode "mlp": default 256)
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5

    def validate(self) -> None:
        super().validate()
        checks = [
            (self.mode in MODES, f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}"),
            (self.body_lr_mult >= 0, f"--body-lr-mult must be >= 0, got {self.body_lr_mult}"),
            (self.unfreeze_stages is None or self.unfreeze_stages >= 0, "--unfreeze-stages must be >= 0"),
            (
                self.unfreeze_stages is None or self.mode == "finetune",
                "--unfreeze-stages only applies to --mode finetune",
            ),
            (self.head_hidden is None or self.head_hidden >= 1, "--head-hidden must be positive"),
            (
                self.mode == "finetune" or self.weights is not None,
                f"--mode {self.mode} trains on frozen features: it needs --weights",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise StriateError(message)

    @property
    def resolved_input_size(self) -> int:
        # Pretrained filters need some resolution: small images are upscaled to 64 px (stride-32
        # backbones then end on a 2x2 map); photos get the usual 224.
        if self.input_size is not None:
            return self.input_size
        return 224 if self.data == "folder" else 64

    @property
    def resolved_head_hidden(self) -> int | None:
        if self.mode == "mlp":
            return self.head_hidden or 256
        return self.head_hidden


# ----------------------------------------------------------------------------------- data
def finetune_preprocessing(config: FinetuneConfig, whole_images: bool) -> Preprocessing:
    """The backbone's own normalisation; whole small images (digits, shapes) resized exactly."""
    mode = config.resolved_color_mode
    in_chans = 1 if mode == "L" else 3
    spec = backbone_preprocessing(config.arch, config.weights, config.resolved_input_size, in_chans)
    if whole_images:
        return fixed_size_spec(mode, config.resolved_input_size, spec.mean, spec.std)
    return spec


def build_finetune_data(config: FinetuneConfig) -> DataSplits:
    """The run's data with the backbone's own preprocessing (not statistics of the training split)."""
    return build_data(config, lambda source, _train: finetune_preprocessing(config, whole_images=source.paths is None))


# ----------------------------------------------------------------------------------- model
def build_finetune_model(config: FinetuneConfig, num_classes: int, in_chans: int) -> StriateModel:
    """The backbone with its pretrained weights and a new head for `num_classes`."""
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "input_size": config.resolved_input_size,
    }
    if config.resolved_head_hidden is not None:
        kwargs["head_hidden"] = config.resolved_head_hidden
    model = create_model(config.arch, weights=config.weights, **kwargs)
    # A checkpoint rebuilds the architecture and then loads its own weights: it must not need the
    # pretrained file (which may be absent where the checkpoint is exported or served).
    model.arch_kwargs = kwargs
    return model


def new_head_modules(model: StriateModel) -> list[nn.Module]:
    """The head layers created for the new task (not pretrained): fc and any appended MLP layers."""
    modules: list[nn.Module] = [model.head.fc]
    hidden = model.arch_kwargs.get("head_hidden")
    if hidden is not None:
        modules += list(model.head.pre_logits)[-3:]  # Linear, ReLU, Dropout appended by the builder
    return modules


def apply_freeze(model: StriateModel, config: FinetuneConfig) -> None:
    """Set requires_grad by mode; frozen stem/stages then stay in eval mode (see Backbone.train)."""
    new = {id(p) for m in new_head_modules(model) for p in m.parameters()}
    if config.mode in ("probe", "mlp"):
        trainable = set(new)
    elif config.unfreeze_stages is None:
        trainable = {id(p) for p in model.parameters()}
    else:
        n = config.unfreeze_stages
        names = model.stage_names
        if n > len(names):
            raise StriateError(
                f"--unfreeze-stages {n}: {config.arch} has only {len(names)} stages ({', '.join(names)})"
            )
        parts = [model.stages[name] for name in names[len(names) - n :]] + [model.head]
        trainable = {id(p) for part in parts for p in part.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)


class _LRMult:
    """Optimizer mixin: each param group's `lr_mult` scales whatever `lr` the schedule set, at step time.

    The engine writes one scheduled lr into every group before each step; the multiplier is applied
    on top and removed again afterwards, so schedule, logging and resume all see the base lr.
    """

    param_groups: list[dict[str, Any]]

    def step(self, closure: Any = None) -> Any:
        base = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g.get("lr_mult", 1.0)
        try:
            return super().step(closure)  # type: ignore[misc]
        finally:
            for g, lr in zip(self.param_groups, base, strict=True):
                g["lr"] = lr


class AdamWLRMult(_LRMult, torch.optim.AdamW):
    pass


class SGDLRMult(_LRMult, torch.optim.SGD):
    pass


def build_finetune_optimizer(model: StriateModel, config: FinetuneConfig) -> torch.optim.Optimizer:
    """Head at lr, pretrained body at lr * body_lr_mult; no weight decay on 1-D tensors (biases, norms)."""
    new = {id(p) for m in new_head_modules(model) for p in m.parameters()}
    body_mult = config.body_lr_mult if config.weights is not None else 1.0  # scratch: nothing to preserve
    groups = []
    for is_new, mult in ((True, 1.0), (False, body_mult)):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in new) == is_new]
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decay]
            if chosen:
                name = f"{'head' if is_new else 'body'}{'' if decay else '_no_decay'}"
                wd = config.weight_decay if decay else 0.0
                groups.append({"params": chosen, "weight_decay": wd, "lr_mult": mult, "name": name})
    if not groups:
        raise StriateError("nothing to train: every parameter is frozen")
    return make_optimizer(groups, config, adamw=AdamWLRMult, sgd=SGDLRMult)


# ----------------------------------------------------------------------------------- training
def finetune_parts(
    config: FinetuneConfig, data: DataSplits, info: dist_utils.DistInfo, resume: Checkpoint | None
) -> TrainParts:
    """The pretrained model (or the resumed one) with its freeze policy and per-group learning rates."""
    seed_everything(config.seed)
    if resume is not None:
        model = resumed_model(resume)
    else:
        model = build_finetune_model(config, len(data.classes), data.preprocessing.channels)
    apply_freeze(model, config)
    return assemble(model, build_finetune_optimizer(model, config), data, config, info)


def finetune(
    config: FinetuneConfig,
    resume: str | Path | Checkpoint | None = None,
    data: DataSplits | None = None,
    progress: bool = True,
    report: ReportHook | None = None,
) -> TrainResult:
    """Fine-tune / probe `config.arch` on `config.data`; returns the engine's TrainResult."""
    config = replace(config, arch=resolve_backbone_name(config.arch))
    return run_training(config, resume, "finetune", build_finetune_data, finetune_parts, data, progress, report=report)


# ----------------------------------------------------------------------------------- pretrained
def pretrained_checkpoint(backbone: str, weights: str = "imagenet", input_size: int | None = None) -> Checkpoint:
    """A backbone with its ImageNet classifier as a Striate checkpoint: 1000 labels, real preprocessing.

    `striate export` turns it into a bundle that classifies photos into the ImageNet classes.
    """
    name = resolve_backbone_name(backbone)
    kwargs: dict[str, Any] = {"num_classes": 1000, "in_chans": 3}
    if input_size is not None:
        kwargs["input_size"] = input_size
    model = create_model(name, weights=weights, **kwargs)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Checkpoint(
        arch=name,
        arch_kwargs=kwargs,
        state_dict=state,
        labels=imagenet_labels(),
        preprocessing=model.preprocessing,
        metrics={},
        config={"arch": name, "weights": weights, "pretrained_only": True},
        data=f"imagenet-1k (pretrained weights {weights})",
        epoch=0,
        # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
        versions={k: str(v) for k, v in current_versions().items()},
    )


def save_pretrained_checkpoint(backbone: str, weights: str, out: str | Path, input_size: int | None = None) -> Path:
    return save_checkpoint(pretrained_checkpoint(backbone, weights, input_size), out)
