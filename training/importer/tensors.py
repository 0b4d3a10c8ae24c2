"""What a graph computes, found by running it: every tensor's value and shape on a probe batch.

onnxruntime runs the prepared graph with chosen intermediate tensors added as outputs, so shapes
are the real ones (no reliance on shape annotations a foreign exporter may have left out) and
shape computations (Shape -> Gather -> Concat) come back as the integers they evaluate to.
"""

from __future__ import annotations

import difflib

import numpy as np
import onnx
import onnxruntime as ort

from striate.errors import StriateError
from training.export.wrappers import IMAGE

PROBE_BATCH = 2  # two images, so that a batch fixed to 1 inside the graph shows up here
SEED = 0


def session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # quiet: a failure reaches the user as one StriateError line
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def probe_image(model: onnx.ModelProto, batch: int = PROBE_BATCH) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(SEED).standard_normal((batch, *dims[1:])).astype(np.float32)


def all_tensors(model: onnx.ModelProto) -> list[str]:
    """Every node output, in graph order."""
    return [t for n in model.graph.node for t in n.output if t]


def run(model: onnx.ModelProto, names: list[str], image: np.ndarray) -> dict[str, np.ndarray]:
    """{name: value} of the tensors `names` of `model` on `image` (they become its outputs)."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names))
    try:
        values = session(probe).run(None, {IMAGE: image})
    except Exception as exc:
        line = next((s for s in str(exc).splitlines() if s.strip()), type(exc).__name__)
        if len(image) > 1:
            raise StriateError(
                f"the graph does not run a batch of {len(image)} images (a batch of 1 fixed inside it?): {line}"
            ) from None
        raise StriateError(f"onnxruntime cannot run the graph: {line}") from None
    return dict(zip(dict.fromkeys(names), values, strict=True))


def probe(model: onnx.ModelProto, batch: int = PROBE_BATCH) -> dict[str, np.ndarray]:
    """Every tensor of `model` on a seeded random batch (the batch axis must be dynamic)."""
    return run(model, all_tensors(model), probe_image(model, batch))


def spatial_maps(values: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Float tensors of shape [N, C, h, w]: the candidates for a target or feature tensor."""
    return {
        name: tuple(v.shape[1:])
        for name, v in values.items()
        if v.dtype == np.float32 and v.ndim == 4 and v.shape[0] == PROBE_BATCH and name != IMAGE
    }


def require_map(name: str, values: dict[str, np.ndarray], what: str) -> tuple[int, int, int]:
    """(C, h, w) of the 4-D float tensor `name`, or one line naming the nearest candidates."""
    maps = spatial_maps(values)
    if name in maps:
        return maps[name]  # type: ignore[return-value]
    close = difflib.get_close_matches(name, list(maps), n=3, cutoff=0.3) or list(maps)[-3:]
    if name in values:
        shape = list(values[name].shape)
        raise StriateError(
            f"{what} {name!r} is not a float [N, C, h, w] map (shape {shape}); 4-D tensors near it: {', '.join(close)}"
        )
    raise StriateError(f"{what} {name!r} is not in the graph; close names: {', '.join(close) or 'none'}")


def check_batch(model: onnx.ModelProto, scores: str) -> None:
    """A batch must give each image the scores it gets alone (a graph made for one image may mix them)."""
    images = probe_image(model)
    together = run(model, [scores], images)[scores]
    alone = np.concatenate([run(model, [scores], images[i : i + 1])[scores] for i in range(len(images))])
    if together.shape != alone.shape or not np.allclose(together, alone, rtol=1e-4, atol=1e-5):
        raise StriateError(
            "the graph has a fixed batch of 1 and gives other scores when run on a batch; "
            "re-export it with a dynamic batch axis"
        )
