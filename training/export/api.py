"""export_model / export_checkpoint: a model in, a checked bundle version out."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from striate.errors import StriateError
from striate.manifest import Preprocessing
from training.checkpoint import file_sha256, load_checkpoint
from training.explain.head import head_steps
from training.models.base import StriateModel

from . import images as real
from .bundle import next_version, staging
from .figures import copy_figures, report_dir_of
from .manifest import build_manifest
from .onnx_export import MODEL_FILE, export_graphs
from .parity import TOLERANCE, check_parity
from .quantize import METHOD as INT8_METHOD
from .quantize import accuracy, quantize_int8
from .wrappers import ExplainGraph, FeaturesGraph, feature_shape

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
PARITY_IMAGES = 8  # real images the export is checked on
CALIB_IMAGES = 256  # default number of training images INT8 is calibrated on
QUANTIZE_CHOICES = ("int8",)


def _check_args(name: str, quantize: str | None) -> None:
    if not NAME_PATTERN.match(name):
        raise StriateError(f"bad model name {name!r}: use lower-case letters, digits, '_', '.', '-'")
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise StriateError(f"unknown quantization {quantize!r}: choose one of {', '.join(QUANTIZE_CHOICES)}")


def export_model(
    model: nn.Module,
    labels: Sequence[str],
    preprocessing: Preprocessing,
    name: str,
    version: int | None = None,
    out_root: str | os.PathLike = "exported",
    *,
    architecture: str | None = None,
    metrics: Mapping[str, float] | None = None,
    data: str = "",
    checkpoint: str | None = None,
    checkpoint_sha256: str | None = None,
    quantize: str | None = None,
    calibration: np.ndarray | None = None,
    heldout: tuple[np.ndarray, np.ndarray] | None = None,
    report_dir: str | os.PathLike | None = None,
) -> Path:
    """Export `model` to `<out_root>/<name>/<version>/` (next free version if None) and check it.

    `calibration` (images) and `heldout` ((images, targets)) are needed only for quantize="int8";
    images are float32 [N, C, H, W] already preprocessed with `preprocessing`. `report_dir`: a
    training report (curves.png, confusion.png, report.html) whose figures the bundle carries.
    A module that is not a StriateModel (torchvision, timm, your own) goes to `training.byom`.
    """
    _check_args(name, quantize)
    if not isinstance(model, StriateModel):
        from training.byom import export_classifier

        if quantize:
            raise StriateError("INT8 export is for Striate models; export this module in float32")
        return export_classifier(
            model, labels, preprocessing, name, version, out_root, architecture=architecture, metrics=metrics, data=data
        )
    if quantize and (calibration is None or heldout is None):
        raise StriateError("INT8 export needs calibration images and a labelled held-out set")
    model = model.eval()
    if len(labels) != model.num_classes:
        raise StriateError(f"{len(labels)} labels for a model with {model.num_classes} classes")
    head_steps(model.head.pre_logits)  # refuse an unsupported head before any work
    input_shape = (preprocessing.channels, *preprocessing.crop_size)
    last_map = feature_shape(model, input_shape)
    features = FeaturesGraph(model, last_map).eval()
    explain = ExplainGraph(model, last_map).eval()
    with torch.no_grad():
        example = features(torch.zeros(2, *input_shape))
    shapes = {n: tuple(t.shape[1:]) for n, t in zip(features.io.outputs, example, strict=True)}
    version = next_version(out_root, name) if version is None else version
    all_metrics = dict(metrics or {})
    with staging(out_root, name, version) as tmp:
        export_graphs(features, explain, input_shape, tmp)
        parity, method_parity = check_parity(tmp, model, real.real_batch(preprocessing, PARITY_IMAGES), TOLERANCE)
        if quantize == "int8":
            assert calibration is not None and heldout is not None
            float_path = tmp / "model.float32.onnx"
            os.replace(tmp / MODEL_FILE, float_path)
            quantize_int8(float_path, tmp / MODEL_FILE, calibration)
            all_metrics["accuracy_float32"] = accuracy(float_path, *heldout)
            all_metrics["accuracy_int8"] = accuracy(tmp / MODEL_FILE, *heldout)
            all_metrics["heldout_images"] = float(len(heldout[1]))
            all_metrics["calibration_images"] = float(len(calibration))
            float_path.unlink()
        figures, report = copy_figures(report_dir, tmp) if report_dir is not None else ({}, None)
        manifest = build_manifest(
            name=name,
            version=version,
            architecture=architecture or model.arch_name or type(model).__name__,
            labels=labels,
            preprocessing=preprocessing,
            output_shapes=shapes,
            stage_names=model.stage_names,
            metrics=all_metrics,
            parity=parity,
            method_parity=method_parity,
            data=data,
            checkpoint=checkpoint,
            checkpoint_sha256=checkpoint_sha256,
            quantization=INT8_METHOD if quantize == "int8" else None,
            figures=figures,
            report=report,
        )
        manifest.dump(tmp)
    return Path(out_root) / name / str(version)


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    name: str,
    version: int | None = None,
    out_root: str | os.PathLike = "exported",
    quantize: str | None = None,
    calib_images: int = CALIB_IMAGES,
    report_dir: str | os.PathLike | None = None,
) -> Path:
    """Export a Striate checkpoint; labels, preprocessing, metrics and data come from it, and its
    training figures from `report_dir` (default: the report found beside it, see `report_dir_of`)."""
    from .data import checkpoint_split

    _check_args(name, quantize)
    ckpt = load_checkpoint(ckpt_path)
    calibration = heldout = None
    if quantize:
        if calib_images < 1:
            raise StriateError(f"--calib-images must be at least 1, got {calib_images}")
        calibration, _ = checkpoint_split(ckpt, "train", limit=calib_images)
        heldout = checkpoint_split(ckpt, "test")
    return export_model(
        ckpt.build_model(),
        ckpt.labels,
        ckpt.preprocessing,
        name,
        version,
        out_root,
        architecture=ckpt.arch,
        metrics=ckpt.metrics,
        data=ckpt.data,
        checkpoint=Path(ckpt_path).as_posix(),
        checkpoint_sha256=file_sha256(ckpt_path),
        quantize=quantize,
        calibration=calibration,
        heldout=heldout,
        report_dir=report_dir if report_dir is not None else report_dir_of(ckpt_path),
    )


__all__ = ["export_checkpoint", "export_model"]
