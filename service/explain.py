"""Explanations in the service: which methods a bundle offers, the request's limits, and running them.

Gradient methods run the bundle's explain graph once for every target of every image (targets
batched on the graph's target axis). Forward methods (striate.explain.forward) and faithfulness
scores (striate.explain.scores) are batches of forward passes of the model graph; they go through
the model's dynamic batcher in chunks of at most `max_batch_size` images, so that classify
requests arriving meanwhile are served between the chunks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from service.batcher import Batcher
from service.errors import Unprocessable
from service.explain_graphs import method_batcher
from service.repository import LoadedModel
from service.settings import Settings
from striate.explain import forward
from striate.explain.methods import DEFAULT_METHOD, METHODS, canonical
from striate.explain.passes import Passes, resize_map, scale_map
from striate.explain.scores import SCORES, score_pass_count, score_passes
from striate.manifest import FeatureLayer

TARGETS_SETTING = "STRIATE_MAX_EXPLAIN_TARGETS"
PASSES_SETTING = "STRIATE_MAX_EXPLAIN_PASSES"


@dataclass(frozen=True)
class ExplainQuery:
    method: str
    targets: tuple[int, ...]  # class indices, or -k: the k-th most probable class
    score: str | None


@dataclass
class ExplainResult:
    method: str
    target_layer: str | None
    logits: np.ndarray  # [N, K]
    explained: np.ndarray  # [N, T] class indices
    cams: np.ndarray  # [N, T, h, w] in [0, 1]
    scores: np.ndarray | None  # [N, T]


def map_layer(model: LoadedModel) -> FeatureLayer | None:
    """The layer forward methods read: the explain target layer, else the last layer with a map."""
    m = model.manifest
    if m.explain is not None:
        layer = m.layer(m.explain.target_layer)
        if layer is not None and layer.map_output:
            return layer
    with_maps = [layer for layer in m.layers if layer.map_output]
    return with_maps[-1] if with_maps else None


def gradient_methods(model: LoadedModel) -> tuple[str, ...]:
    ex = model.manifest.explain
    return ex.gradient_methods if ex is not None and model.explain is not None else ()


def available_methods(model: LoadedModel) -> list[str]:
    has_map = map_layer(model) is not None
    grads = gradient_methods(model)
    return [
        name
        for name, info in METHODS.items()
        if (name in grads) or (info.kind == "forward" and (has_map or not info.needs_map))
    ]


def explain_info(model: LoadedModel, settings: Settings) -> dict:
    """The `explain` field of a model's metadata (the explain HTTP contract)."""
    ex = model.manifest.explain
    layer = map_layer(model)
    available = available_methods(model)
    methods = []
    for name in available:
        parity = ex.method_parity(name) if ex is not None else None
        info = METHODS[name]
        methods.append(
            {
                "name": name,
                "title": info.title,
                "kind": info.kind,
                "per_class": info.per_class,
                "summary": info.summary,
                "parity": parity.max_abs_diff if parity else None,
            }
        )
    unavailable = [
        {"name": name, "title": info.title, "kind": info.kind, "why": unavailable_reason(model, name)}
        for name, info in METHODS.items()
        if name not in available
    ]
    target_layer = ex.target_layer if ex is not None else (layer.name if layer else None)
    default = DEFAULT_METHOD if DEFAULT_METHOD in gradient_methods(model) else "occlusion"
    cam_shape = (
        list(ex.cam_shape) if ex is not None else (list(layer.map_shape[1:]) if layer and layer.map_shape else None)
    )
    return {
        "target_layer": target_layer,
        "cam_shape": cam_shape,
        "default_method": default,
        "methods": methods,
        "unavailable": unavailable,
        "scores": list(SCORES),
        "max_targets": settings.max_explain_targets,
        "max_passes": settings.max_explain_passes,
    }


def resolve_method(model: LoadedModel, method: str | None, settings: Settings) -> str:
    if method is None or method == "":
        return explain_info(model, settings)["default_method"]
    name = canonical(method)
    available = available_methods(model)
    if name is None:
        raise Unprocessable(f"unknown explanation method {method!r}; supported: {', '.join(METHODS)}")
    if name not in available:
        raise Unprocessable(
            f"method {name!r} is not available for {model.name}/{model.version}: "
            f"{unavailable_reason(model, name)}; available: {', '.join(available)}"
        )
    return name


def unavailable_reason(model: LoadedModel, name: str) -> str:
    """Why the bundle cannot run method `name` (one that `available_methods` leaves out)."""
    if METHODS[name].kind != "gradient":
        return "it needs a feature map and the bundle exports none"
    if gradient_methods(model):
        return "its explain graph does not compute it (re-export the bundle)"
    ex = model.manifest.explain
    if ex is not None and ex.no_gradients:
        return f"the bundle has no gradient graph (explain.onnx): {ex.no_gradients}"
    return "the bundle has no gradient graph (explain.onnx)"


def resolve_class(model: LoadedModel, target: str) -> int:
    labels = model.manifest.labels
    target = target.strip()
    if target.isdigit():
        index = int(target)
        if index >= len(labels):
            raise Unprocessable(f"class index {index} is out of range: {model.name} has {len(labels)} classes")
        return index
    if target in labels:
        return labels.index(target)
    raise Unprocessable(f"unknown class {target!r}; give an index 0..{len(labels) - 1} or one of the labels")


def parse_query(
    model: LoadedModel,
    settings: Settings,
    method: str | None,
    targets: str | None,
    top_targets: int | None,
    score: str | None,
) -> ExplainQuery:
    """Check a request's method, targets and score, or a 422 saying what is wrong."""
    name = resolve_method(model, method, settings)
    if targets and top_targets is not None:
        raise Unprocessable("give either targets or top_targets, not both")
    if top_targets is not None:
        if top_targets < 1:
            raise Unprocessable("top_targets must be at least 1")
        chosen = tuple(-k for k in range(1, min(top_targets, len(model.manifest.labels)) + 1))
    elif targets:
        chosen = tuple(resolve_class(model, t) for t in targets.split(",") if t.strip())
        if not chosen:
            raise Unprocessable("targets is empty: give class indices or labels, comma-separated")
    else:
        chosen = (-1,)
    if len(chosen) > settings.max_explain_targets:
        raise Unprocessable(
            f"{len(chosen)} targets per image is over the limit of {settings.max_explain_targets} "
            f"(raise it with {TARGETS_SETTING})"
        )
    if score is not None and score not in SCORES:
        raise Unprocessable(f"unknown score {score!r}; supported: {', '.join(SCORES)}")
    return ExplainQuery(name, chosen, score or None)


def method_passes(model: LoadedModel, method: str, shape: tuple[int, int]) -> int:
    """Forward passes one image costs with `method` (beyond the one every request makes)."""
    if method == "scorecam":
        layer = map_layer(model)
        return layer.map_shape[0] if layer and layer.map_shape else 0
    if method == "occlusion":
        return 1 + len(forward.occlusion_boxes(shape))
    if method == "rise":
        return forward.RISE_MASKS
    return 0


def check_passes(model: LoadedModel, query: ExplainQuery, images: int, settings: Settings) -> int:
    spec = model.manifest.input
    per_image = method_passes(model, query.method, (spec.height, spec.width))
    if query.score:
        per_image += score_pass_count(query.score) * len(query.targets)
    total = per_image * images
    if total > settings.max_explain_passes:
        raise Unprocessable(
            f"this request needs {total} forward passes ({per_image} per image), over the limit of "
            f"{settings.max_explain_passes} per request (raise it with {PASSES_SETTING}, or send fewer "
            "images or targets)"
        )
    return total


async def first_batcher(model: LoadedModel, method: str, settings: Settings) -> Batcher:
    """The batcher a request for `method` runs on first (for announcing it while images decode)."""
    ex = model.manifest.explain
    if METHODS[method].kind != "gradient":
        return model.batcher
    if ex.single_target:
        return model.explain_batcher
    return (await method_batcher(model, method, settings))[0]


async def run_passes(model: LoadedModel, passes: Passes, chunk: int):
    """Run `passes` through the model's batcher, `chunk` inputs at a time; returns their answer."""
    if passes.count == 0:
        return passes.finish(np.zeros((0, len(model.manifest.labels)), np.float32))
    name, logits = model.manifest.input.name, model.manifest.logits_output
    parts = []
    for a, b in passes.chunks(chunk):  # making a chunk (masks, imputation) is numpy work: off the loop
        batch = await asyncio.to_thread(passes.make, a, b)
        out = await model.batcher.submit({name: np.ascontiguousarray(batch, dtype=np.float32)}, [logits])
        parts.append(out[logits])
    return await asyncio.to_thread(passes.finish, np.concatenate(parts))


def choose(logits: np.ndarray, targets: tuple[int, ...]) -> np.ndarray:
    """[N, T] class indices for `targets` (-k: the k-th most probable class of each image)."""
    order = np.argsort(-logits, axis=1, kind="stable")
    t = np.broadcast_to(np.asarray(targets, np.int64), (len(logits), len(targets)))
    return np.where(t < 0, np.take_along_axis(order, np.clip(-t - 1, 0, logits.shape[1] - 1), 1), t)


async def _gradient(
    model: LoadedModel, tensor: np.ndarray, query: ExplainQuery, settings: Settings
) -> tuple[np.ndarray, ...]:
    ex = model.manifest.explain
    batcher = model.explain_batcher
    n, t = len(tensor), len(query.targets)
    image = model.manifest.input.name
    if ex.single_target:  # an older graph: one target per image, Grad-CAM only; repeat the images
        logits = (await model.batcher.submit({image: tensor}, [model.manifest.logits_output]))[
            model.manifest.logits_output
        ]
        explained = choose(logits, query.targets)
        feeds = {image: np.repeat(tensor, t, axis=0), ex.targets_input: explained.reshape(-1)}
        out = await batcher.submit(feeds, [ex.cam_outputs[query.method]])
        return logits, explained, out[ex.cam_outputs[query.method]].reshape(n, t, *ex.cam_shape)
    feeds = {image: tensor, ex.targets_input: np.tile(np.asarray(query.targets, np.int64), (n, 1))}
    batcher, outputs = await method_batcher(model, query.method, settings)
    out = await batcher.submit(feeds, outputs)
    return out[ex.logits_output], out[ex.explained_output], out[ex.cam_outputs[query.method]]


async def _forward(model: LoadedModel, tensor: np.ndarray, query: ExplainQuery, chunk: int) -> tuple[np.ndarray, ...]:
    m = model.manifest
    layer = map_layer(model)
    wanted = [m.logits_output] + ([layer.map_output] if METHODS[query.method].needs_map else [])
    first = await model.batcher.submit({m.input.name: tensor}, wanted)
    logits = first[m.logits_output]
    explained = choose(logits, query.targets)
    cams = []
    for i, x in enumerate(tensor):
        if query.method == "eigencam":
            cams.append(await asyncio.to_thread(forward.eigen_cam, first[layer.map_output][i], len(query.targets)))
            continue
        if query.method == "scorecam":
            passes = forward.score_cam(x, first[layer.map_output][i], explained[i])
        elif query.method == "occlusion":
            passes = forward.occlusion(x, explained[i])
        else:
            passes = forward.rise(x, explained[i])
        cams.append(await run_passes(model, passes, chunk))
    return logits, explained, np.stack(cams)


async def explain(model: LoadedModel, tensor: np.ndarray, query: ExplainQuery, settings: Settings) -> ExplainResult:
    """Maps [N, T, h, w] for the images `tensor` [N, C, H, W], with their faithfulness when asked."""
    check_passes(model, query, len(tensor), settings)
    chunk = settings.max_batch_size
    if METHODS[query.method].kind == "gradient":
        logits, explained, cams = await _gradient(model, tensor, query, settings)
    else:
        logits, explained, cams = await _forward(model, tensor, query, chunk)
    scores = None
    if query.score:
        scores = np.zeros(explained.shape, np.float64)
        size = tuple(tensor.shape[2:])
        for i, x in enumerate(tensor):
            for j, target in enumerate(explained[i]):
                cam = scale_map(np.clip(resize_map(cams[i, j], size), 0.0, 1.0))
                passes = await asyncio.to_thread(score_passes, query.score, x, cam, int(target))
                scores[i, j] = await run_passes(model, passes, chunk)
    ex = model.manifest.explain
    layer = map_layer(model)
    target_layer = ex.target_layer if ex is not None else (layer.name if layer else None)
    if not METHODS[query.method].needs_map:
        target_layer = None
    return ExplainResult(
        query.method, target_layer, logits, explained.astype(np.int64), cams.astype(np.float32), scores
    )


async def gradcam_per_image(model: LoadedModel, image: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, K], Grad-CAM [N, h, w]) for one target per image (negative: the predicted class)."""
    ex = model.manifest.explain
    t = np.asarray(target, np.int64)
    feeds = {model.manifest.input.name: image, ex.targets_input: t if ex.single_target else t[:, None]}
    cam = ex.cam_outputs[DEFAULT_METHOD]
    out = await model.explain_batcher.submit(feeds, [ex.logits_output, cam])
    return out[ex.logits_output], out[cam] if ex.single_target else out[cam][:, 0]
