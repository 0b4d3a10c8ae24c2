"""A bundle as the Open Inference Protocol sees it: tensor metadata, input checks, tensor inference.

Inputs: `image` FP32 [N, C, H, W] (preprocessed), or `image` BYTES [N] holding encoded images
(JPEG, PNG...) that the server decodes and preprocesses with the manifest, as the v1 API does;
and `target` INT64 [N] when the bundle explains (negative: the predicted class).
Outputs: the model graph's outputs, plus `cam` from the explain graph; unless asked for, the
outputs are the model graph's (the explain graph runs only on demand). With Triton's
classification extension (`parameters.classification = k` on a requested output) an [N, C] output
comes back as BYTES [N, k], "score:index:label" best first (":label" for the logits only: the
labels name the classes).
"""

from __future__ import annotations

import numpy as np

from service.errors import BadRequest
from service.explain import gradcam_per_image, gradient_methods
from service.images import Upload
from service.oip import datatype_of
from service.repository import LoadedModel

V2_TARGET, V2_CAM = "target", "cam"  # Grad-CAM on infer: one target per image in, one map out


def explain_names(model: LoadedModel) -> tuple[str, str] | None:
    return (V2_TARGET, V2_CAM) if "gradcam" in gradient_methods(model) else None


def output_specs(model: LoadedModel) -> list[dict]:
    outs = [
        {"name": o.name, "datatype": datatype_of(model.graph.outputs[o.name].dtype), "shape": list(o.shape)}
        for o in model.manifest.outputs
    ]
    names = explain_names(model)
    if names:
        h, w = model.manifest.explain.cam_shape
        outs.append({"name": names[1], "datatype": "FP32", "shape": [-1, h, w]})
    return outs


def input_spec(model: LoadedModel) -> dict:
    spec = model.manifest.input
    return {"name": spec.name, "datatype": "FP32", "shape": [-1, spec.channels, spec.height, spec.width]}


def check_inputs(
    model: LoadedModel, inputs: dict, max_images: int
) -> tuple[np.ndarray | list[Upload], np.ndarray | None]:
    """(image tensor, or encoded images to decode; target or None), or a 400 saying what is wrong."""
    spec = model.manifest.input
    names = explain_names(model)
    allowed = {spec.name, *([names[0]] if names else [])}
    unknown = sorted(set(inputs) - allowed)
    if unknown:
        raise BadRequest(f"unknown input(s) {unknown}; {model.name} takes {sorted(allowed)}")
    if spec.name not in inputs:
        raise BadRequest(f"input {spec.name!r} is required")
    datatype, image = inputs[spec.name]
    want = (spec.channels, spec.height, spec.width)
    if datatype == "BYTES":
        if image.ndim not in (1, 2) or image.shape[0] < 1 or image.size != image.shape[0]:
            raise BadRequest(f"BYTES input {spec.name!r} has shape {list(image.shape)}; expected [N] or [N, 1]")
    elif datatype != "FP32":
        raise BadRequest(f"input {spec.name!r} must be FP32 (a tensor) or BYTES (encoded images), got {datatype}")
    elif image.ndim != 4 or tuple(image.shape[1:]) != want or image.shape[0] < 1:
        expected = ", ".join(map(str, want))
        raise BadRequest(f"input {spec.name!r} has shape {list(image.shape)}; expected [N, {expected}]")
    if image.shape[0] > max_images:
        raise BadRequest(f"batch of {image.shape[0]} images is over the limit of {max_images}")
    target = None
    if names and names[0] in inputs:
        t_type, target = inputs[names[0]]
        if t_type not in ("INT64", "INT32") or target.shape != (image.shape[0],):
            raise BadRequest(f"input {names[0]!r} must be INT64 [N] with N = {image.shape[0]}")
        target = target.astype(np.int64)
        if (target >= len(model.manifest.labels)).any():
            raise BadRequest(f"input {names[0]!r} holds a class index >= {len(model.manifest.labels)}")
    if datatype == "BYTES":
        return [Upload(data, f"{spec.name}[{i}]") for i, data in enumerate(image.ravel())], target
    return image, target


async def run_tensors(model: LoadedModel, image: np.ndarray, target: np.ndarray | None, wanted: list[str]) -> dict:
    m = model.manifest
    names = explain_names(model)
    results: dict[str, np.ndarray] = {}
    graph_outputs = [n for n in wanted if n in model.graph.outputs]
    use_explain = names is not None and (names[1] in wanted or target is not None)
    if use_explain:
        logits, cam = await gradcam_per_image(model, image, target if target is not None else np.full(len(image), -1))
        results |= {m.logits_output: logits, names[1]: cam}
        graph_outputs = [n for n in graph_outputs if n not in results]
    if graph_outputs:
        with model.batcher.announce() as ticket:
            results |= await model.batcher.submit({m.input.name: image}, graph_outputs, ticket)
    return {name: results[name] for name in wanted}


def classification(model: LoadedModel, name: str, array: np.ndarray, k: int) -> np.ndarray:
    """Triton's classification extension: the top `k` of each row as BYTES "score:index[:label]"."""
    if array.ndim != 2:
        raise BadRequest(f"output {name!r} has shape {list(array.shape)}: classification needs an [N, classes] output")
    labels = model.manifest.labels if name == model.manifest.logits_output else None
    k = min(k, array.shape[1])
    order = np.argsort(-array, axis=1, kind="stable")[:, :k]
    out = np.empty(order.shape, dtype=object)
    for row, indices in enumerate(order):
        for col, index in enumerate(indices):
            text = f"{float(array[row, index]):f}:{int(index)}" + (f":{labels[index]}" if labels else "")
            out[row, col] = text.encode()
    return out
