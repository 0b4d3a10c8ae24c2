"""Stage features for a sample of images, from a checkpoint (torch) or a bundle (onnxruntime).

`open_model(path)` returns a `FeatureModel` whichever the source: a `.pt` checkpoint runs
`forward_stages` and pools each stage's map by global average pooling; a bundle folder runs
`model.onnx` and reads the manifest's `layers` outputs (`<stage>_pooled`, `embedding`, and the
`<stage>_map` outputs when exported). Both give the same layer names, in depth order, with
"embedding" (the head's pre-logits vector) last.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from striate.errors import StriateError
from striate.manifest import MANIFEST_FILE, Manifest, Preprocessing

EMBEDDING = "embedding"
INPUT = "input"  # the preprocessed pixels, flattened: the baseline every layer is compared with
BATCH = 128


class FeatureModel(ABC):
    """A classifier whose per-layer features can be read. `close()` releases sessions/weights."""

    labels: list[str]
    preprocessing: Preprocessing
    layer_names: list[str]  # pooled layers, in depth order, "embedding" last
    map_layers: list[str]  # layers whose [N, C, h, w] maps are available
    source: str
    run_config: dict  # the training run's config when known (checkpoints), else {}
    data: str = ""  # what the model was trained on ("digits", "shapes(...)", "folder:/dir"), if known
    display_name: str = "model"  # for figure titles: the checkpoint's file name or "<bundle> v<version>"

    @abstractmethod
    def _run(self, x: np.ndarray, pooled: list[str], maps: list[str]) -> dict[str, np.ndarray]:
        """One batch: {"logits": ..., "<layer>": pooled [N, C], "<layer>:map": [N, C, h, w]}."""

    def _batched(self, x: np.ndarray, pooled: list[str], maps: list[str]) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        parts = [self._run(x[i : i + BATCH], pooled, maps) for i in range(0, len(x), BATCH)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}

    def check_layers(self, names: list[str], maps: bool = False) -> None:
        known = self.map_layers if maps else self.layer_names
        for name in names:
            if name not in known:
                what = "feature maps" if maps else "features"
                raise StriateError(
                    f"layer {name!r} has no {what} in {self.source}; available: {', '.join(known) or 'none'}"
                )

    def features(self, x: np.ndarray, layers: list[str] | None = None) -> dict[str, np.ndarray]:
        """Pooled [N, C] features per layer (all layers when `layers` is None), in depth order."""
        layers = list(self.layer_names if layers is None else layers)
        self.check_layers(layers)
        out = self._batched(x, layers, [])
        return {name: out[name] for name in layers}

    def feature_maps(self, x: np.ndarray, layer: str) -> np.ndarray:
        """[N, C, h, w] activations of `layer`."""
        self.check_layers([layer], maps=True)
        return self._batched(x, [], [layer])[f"{layer}:map"]

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self._batched(x, [], [])["logits"]

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class TorchFeatureModel(FeatureModel):
    """A `StriateModel` in eval mode: stage maps by `forward_stages`, pooled by global average."""

    def __init__(
        self,
        model,
        labels: list[str],
        preprocessing: Preprocessing,
        source: str = "model",
        run_config: dict | None = None,
        data: str = "",
    ):
        import torch

        self._torch = torch
        self.model = model.eval()
        self.labels = list(labels)
        self.preprocessing = preprocessing
        self.layer_names = [*model.stage_names, EMBEDDING]
        self.map_layers = list(model.stage_names)
        self.source = source
        self.run_config = dict(run_config or {})
        self.data = data
        self.display_name = source.split("/")[-1]

    def _run(self, x: np.ndarray, pooled: list[str], maps: list[str]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            stages = self.model.forward_stages(torch.from_numpy(x))
            last = stages[self.model.stage_names[-1]]
            emb = self.model.forward_head(last, pre_logits=True)
            out = {"logits": self.model.head.fc(emb).numpy()}
            for name in pooled:
                out[name] = emb.numpy() if name == EMBEDDING else stages[name].mean(dim=(2, 3)).numpy()
            for name in maps:
                out[f"{name}:map"] = stages[name].numpy()
        return out

    def close(self) -> None:
        self.model = None


class OnnxFeatureModel(FeatureModel):
    """A Striate bundle in onnxruntime: layer outputs named by the manifest."""

    def __init__(self, bundle_dir: str | Path, providers: list[str] | None = None):
        import onnxruntime as ort

        bundle_dir = Path(bundle_dir)
        try:
            self.manifest = Manifest.load(bundle_dir)
        except (OSError, ValueError) as exc:
            raise StriateError(f"invalid bundle manifest in {bundle_dir}: {str(exc).splitlines()[0]}") from None
        graph = bundle_dir / self.manifest.graph
        if not graph.is_file():
            raise StriateError(f"bundle {bundle_dir} has no {self.manifest.graph}")
        self.bundle_dir = bundle_dir
        self.session = ort.InferenceSession(str(graph), providers=providers or ["CPUExecutionProvider"])
        self.labels = list(self.manifest.labels)
        self.preprocessing = self.manifest.preprocessing
        layers = [layer for layer in self.manifest.layers if layer.name != self.manifest.embedding_layer]
        self._layers = {layer.name: layer for layer in self.manifest.layers}
        self.layer_names = [layer.name for layer in layers] + [self.manifest.embedding_layer]
        self.map_layers = [layer.name for layer in layers if layer.map_output]
        self.source = f"bundle {bundle_dir}"
        self.run_config = {}
        self.data = self.manifest.provenance.data or ""
        self.display_name = f"{self.manifest.name} v{self.manifest.version}"
        explain = self.manifest.explain
        self.explain_path = bundle_dir / explain.graph if explain and (bundle_dir / explain.graph).is_file() else None

    def _run(self, x: np.ndarray, pooled: list[str], maps: list[str]) -> dict[str, np.ndarray]:
        names = [self.manifest.logits_output]
        names += [self._layers[name].output for name in pooled]
        names += [self._layers[name].map_output for name in maps]
        values = self.session.run(names, {self.manifest.input.name: x})
        keys = ["logits", *pooled, *(f"{name}:map" for name in maps)]
        return dict(zip(keys, values, strict=True))

    def close(self) -> None:
        self.session = None


def open_model(path: str | Path) -> FeatureModel:
    """A `.pt` checkpoint or a bundle folder (with manifest.json) -> `FeatureModel`."""
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST_FILE).is_file():
            raise StriateError(f"{path} is a folder without {MANIFEST_FILE}: not a Striate bundle")
        return OnnxFeatureModel(path)
    if path.suffix == ".pt" or (path.is_file() and path.suffix != ".onnx"):
        from training.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        return TorchFeatureModel(
            ckpt.build_model(),
            ckpt.labels,
            ckpt.preprocessing,
            source=f"checkpoint {path}",
            run_config=ckpt.config,
            data=ckpt.data,
        )
    if not path.exists():
        raise StriateError(f"not found: {path}")
    raise StriateError(f"{path}: expected a .pt checkpoint or a bundle folder with {MANIFEST_FILE}")


def onnx_classifier(
    path: str | Path, input_name: str | None = None, output_name: str | None = None
) -> tuple[Callable[[np.ndarray], np.ndarray], tuple]:
    """Any ONNX classifier as `logits_fn(x [N, C, H, W]) -> [N, K]`, plus its input shape.

    Defaults to the graph's first input and first output: no Striate manifest is needed, which is
    what makes occlusion sensitivity work on models Striate did not export.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = (
        session.get_inputs()[0]
        if input_name is None
        else next((i for i in session.get_inputs() if i.name == input_name), None)
    )
    if inp is None:
        raise StriateError(f"{path} has no input named {input_name!r}")
    out_name = output_name or session.get_outputs()[0].name

    def logits_fn(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.concatenate(
            [session.run([out_name], {inp.name: x[i : i + BATCH]})[0] for i in range(0, len(x), BATCH)]
        )

    return logits_fn, tuple(inp.shape)


@dataclass
class Sample:
    """Preprocessed images with integer labels indexing the model's label list."""

    x: np.ndarray  # float32 [N, C, H, W]
    y: np.ndarray  # int64 [N]
    labels: list[str]
    index: np.ndarray  # position of each image in the source dataset


def stratified_indices(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """About `n` indices with every class represented in proportion (all of them if n >= len(y))."""
    if n >= len(y):
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    return np.sort(idx)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
