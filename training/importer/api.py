"""import_onnx: an ONNX classifier in, a checked bundle version out (model.onnx, explain.onnx, manifest).

The steps: load and validate (source.py), bring the input to `image` NCHW with a dynamic batch,
probe every tensor's shape (tensors.py), write model.onnx with the bundle's outputs (features.py),
build the reverse pass of the head after the target tensor (reverse.py, ops.py) and join it into
explain.onnx (explain_graph.py), check both (the caller's `check`, else selfcheck.py), write the
manifest. All of it happens in training/export/bundle.py's staging folder: on any error nothing
appears in the model repository.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import onnx

from striate.errors import StriateError
from striate.manifest import Manifest, Preprocessing
from training.checkpoint import file_sha256
from training.export.api import NAME_PATTERN
from training.export.bundle import check_free, next_version, staging
from training.export.manifest import build_manifest
from training.export.onnx_export import EXPLAIN_FILE, MODEL_FILE
from training.export.wrappers import map_name

from .explain_graph import build_explain
from .features import Layer, build_features, find_embedding, layer_name, module_path, set_output_shapes
from .ops import NotDifferentiable
from .reverse import HeadFunction, HeadGrad, build_head
from .selfcheck import CheckResult, self_check
from .source import load, prepare
from .tensors import check_batch, probe, probe_image, require_map, run, spatial_maps

Check = Callable[[Path], CheckResult]


def default_map(values, scores: str, model: onnx.ModelProto) -> str | None:
    """The last [N, C, h, w] map with C > 1 and h*w > 1 that the scores depend on: pytorch-grad-cam's
    usual choice, the last convolutional stage. Transposed maps (NHWC, or a pooled map as
    [N, 1, 1, C]) are not candidates: their axis 1 is not the channels."""
    maps = spatial_maps(values)
    feeding = _ancestors(model, scores)
    order = [t for n in model.graph.node for t in n.output if t in maps and t in feeding and n.op_type != "Transpose"]
    spatial = [t for t in order if maps[t][0] > 1 and maps[t][1] * maps[t][2] > 1]
    return (spatial or order or [None])[-1]


def _refuse_transposed(model: onnx.ModelProto, tensor: str, what: str) -> None:
    node = next((n for n in model.graph.node if tensor in n.output), None)
    if node is not None and node.op_type == "Transpose":
        raise StriateError(
            f"{what} {tensor!r} is a Transpose of {node.input[0]!r}, not an [N, C, h, w] map: name {node.input[0]!r}"
        )


def list_tensors(
    source: str | os.PathLike | onnx.ModelProto, preprocessing: Preprocessing, logits_output: str | None = None
) -> tuple[dict[str, tuple[int, ...]], str | None]:
    """({tensor: (C, h, w)} of the [N, C, h, w] maps the logits depend on, in graph order; the suggested target)."""
    prepared = prepare(load(source), preprocessing, logits_output)
    values = probe(prepared.model)
    feeding = _ancestors(prepared.model, prepared.scores)
    maps = {t: shape for t, shape in spatial_maps(values).items() if t in feeding}
    return maps, default_map(values, prepared.scores, prepared.model)


def _ancestors(model: onnx.ModelProto, tensor: str) -> set[str]:
    needed = {tensor}
    for node in reversed(model.graph.node):
        if any(t in needed for t in node.output):
            needed.update(t for t in node.input if t)
    return needed


def _source_digest(source) -> tuple[str | None, str | None]:
    if isinstance(source, onnx.ModelProto):
        return None, None
    return Path(source).as_posix(), file_sha256(source)


def import_onnx(
    source: str | os.PathLike | onnx.ModelProto,
    labels: Sequence[str],
    preprocessing: Preprocessing,
    name: str,
    version: int | None = None,
    out_root: str | os.PathLike = "exported",
    *,
    target_tensor: str | None = None,
    feature_tensors: Sequence[str] = (),
    logits_output: str | None = None,
    architecture: str | None = None,
    origin: str = "",
    metrics: Mapping[str, float] | None = None,
    data: str = "",
    check: Check | None = None,
    require_gradients: bool = False,
) -> Path:
    """Write `<out_root>/<name>/<version>/` from an ONNX classifier; see the module docstring.

    `target_tensor`: the [N, C, h, w] tensor to explain (None: gradient-free methods only, on the
    last spatial map). An op after it without a backward rule is refused by name when
    `require_gradients`, else the bundle gets gradient-free methods only and its manifest says why.
    `check(staging_dir)` replaces the self-check (e.g. parity with the source torch model).
    """
    if not NAME_PATTERN.match(name):
        raise StriateError(f"bad model name {name!r}: use lower-case letters, digits, '_', '.', '-'")
    if require_gradients and target_tensor is None:
        raise StriateError("gradients were required but no target tensor was named")
    version = next_version(out_root, name) if version is None else version
    check_free(out_root, name, version)  # before any work
    model = load(source)
    prepared = prepare(model, preprocessing, logits_output)
    values = probe(prepared.model)
    if prepared.fixed_batch:
        check_batch(prepared.model, prepared.scores)
    scores = values[prepared.scores]
    if scores.ndim != 2 or scores.dtype.kind != "f":
        raise StriateError(f"the logits {prepared.scores!r} have shape {list(scores.shape)}; expected [N, classes]")
    if len(labels) != scores.shape[1]:
        raise StriateError(f"{len(labels)} labels for a graph with {scores.shape[1]} logits")
    named = [(t, "feature tensor") for t in feature_tensors] + (
        [(target_tensor, "target tensor")] if target_tensor else []
    )
    for tensor, what in named:
        require_map(tensor, values, what)
        _refuse_transposed(prepared.model, tensor, what)
    target = target_tensor or default_map(values, prepared.scores, prepared.model)
    if target is None:
        raise StriateError("the graph has no [N, C, h, w] float tensor to explain or to serve as features")

    head: HeadFunction | None = None
    no_gradient_reason = "no target tensor was named at import"
    if target_tensor is not None:
        try:
            head = build_head(prepared.model, values, target_tensor, prepared.scores)
        except NotDifferentiable as exc:
            if require_gradients:
                raise
            no_gradient_reason = str(exc)

    taken: set[str] = set()
    layers = []
    for tensor in [*dict.fromkeys(t for t in feature_tensors if t != target), target]:
        layers.append(Layer(layer_name(module_path(prepared.model, tensor) or tensor, taken), tensor))
        taken.add(layers[-1].name)
    embedding = find_embedding(prepared.model, prepared.scores, values)
    body = build_features(prepared.model, prepared.scores, embedding, layers)
    shapes = {
        k: tuple(v.shape[1:]) for k, v in run(body, [o.name for o in body.graph.output], probe_image(body)).items()
    }
    set_output_shapes(body, shapes)
    target_map = map_name(layers[-1].name)

    checkpoint, digest = _source_digest(source)
    with staging(out_root, name, version) as tmp:
        onnx.save(body, str(tmp / MODEL_FILE))
        if head is not None:
            grad = HeadGrad(head, len(labels))
            onnx.save(build_explain(body, grad, target_map, shapes[target_map]), str(tmp / EXPLAIN_FILE))
        _check_graphs(tmp)
        if check is not None:
            result = check(tmp)
        else:
            result = self_check(tmp, prepared.model, prepared.scores, embedding, target_map, head, preprocessing)
        manifest = build_manifest(
            name=name,
            version=version,
            architecture=architecture or _architecture(model, source),
            labels=labels,
            preprocessing=preprocessing,
            output_shapes=shapes,
            stage_names=[layer.name for layer in layers],
            metrics=dict(metrics or {}),
            parity=result.parity,
            method_parity=result.method_parity,
            data=data,
            checkpoint=origin or (f"onnx:{checkpoint}" if checkpoint else None),
            checkpoint_sha256=digest,
        )
        manifest = _describe(manifest, layers, prepared.notes, head is not None, no_gradient_reason)
        manifest.dump(tmp)
    return Path(out_root) / name / str(version)


def _check_graphs(folder: Path) -> None:
    for file in (MODEL_FILE, EXPLAIN_FILE):
        if (folder / file).exists():
            try:
                onnx.checker.check_model(str(folder / file), full_check=True)
            except Exception as exc:
                raise StriateError(f"onnx.checker rejected the written {file}: {str(exc).splitlines()[0]}") from None


def _architecture(model: onnx.ModelProto, source) -> str:
    if model.graph.name and model.graph.name not in ("main_graph", "torch_jit", "torch-jit-export"):
        return model.graph.name
    return Path(source).stem if not isinstance(source, onnx.ModelProto) else "onnx"


def _describe(manifest: Manifest, layers: list[Layer], notes, has_graph: bool, reason: str) -> Manifest:
    """Say where each layer comes from and, without an explain graph, why."""
    sources = {map_name(layer.name): layer.tensor for layer in layers}
    outputs = []
    for spec in manifest.outputs:
        text = spec.description
        if spec.name in sources:
            text = f"{text} (tensor {sources[spec.name]!r} of the imported graph)"
        if spec.name == manifest.logits_output and notes:
            text = f"{text}; import: {'; '.join(notes)}"
        if spec.name == map_name(layers[-1].name) and not has_graph:
            text = f"{text}; gradient-free methods only: {reason}"
        outputs.append(spec.model_copy(update={"description": text}))
    explain = manifest.explain
    if not has_graph and explain is not None:
        explain = explain.model_copy(update={"graph": None, "cam_outputs": {}, "parity": (), "no_gradients": reason})
    updated = manifest.model_copy(update={"outputs": tuple(outputs), "explain": explain})
    return Manifest.model_validate(updated.model_dump())


__all__ = ["CheckResult", "import_onnx", "list_tensors"]
