"""`BundleEmbedder`: a table of (id, path) in, a table of vectors, top-k and errors out.

One instance holds one onnxruntime session. It is a plain callable class so that Ray Data can run
it as an actor pool (`map_batches(BundleEmbedder, ...)`, one session per actor, loaded once) and the
local engine can call it in a loop: both engines produce the same rows from the same code.
An image that cannot be read or decoded becomes a row with its `error` and null vectors; it never
fails the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from service.inference import softmax
from service.runtime import Graph
from service.settings import Settings
from striate.errors import StriateError
from striate.manifest import Manifest
from striate.preprocess import ImageDecodeError, decode_image, preprocess

from .inputs import ID, PATH

ERROR = "error"
TOP_K_LABELS, TOP_K_INDICES, TOP_K_PROBS = "top_k_labels", "top_k_indices", "top_k_probs"


def read_bytes(path: str) -> bytes:
    """A local path, or a URI that pyarrow's filesystems open (file://, s3://, gs://, hdfs://...)."""
    if "://" in path:
        fs, inner = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as stream:
            return stream.read()
    return Path(path).read_bytes()


@dataclass(frozen=True)
class EmbedOptions:
    """What to compute; picklable, so Ray ships it to every actor."""

    bundle: str  # a bundle folder: <repository>/<name>/<version>
    layers: tuple[str, ...] = ("embedding",)
    top_k: int = 5
    threads: int = 1  # onnxruntime intra-op threads per embedder (1 per actor; all cores locally)
    device: str = "cpu"


def output_schema(manifest: Manifest, options: EmbedOptions) -> pa.Schema:
    fields = [pa.field(ID, pa.string()), pa.field(PATH, pa.string())]
    for name in options.layers:
        dim = manifest.layer(name).dim  # type: ignore[union-attr]  # checked by check_layers
        fields.append(pa.field(name, pa.list_(pa.float32(), dim)))
    if options.top_k:
        fields += [
            pa.field(TOP_K_LABELS, pa.list_(pa.string())),
            pa.field(TOP_K_INDICES, pa.list_(pa.int32())),
            pa.field(TOP_K_PROBS, pa.list_(pa.float32())),
        ]
    fields.append(pa.field(ERROR, pa.string()))
    return pa.schema(fields)


def check_options(manifest: Manifest, options: EmbedOptions) -> None:
    known = [layer.name for layer in manifest.layers]
    unknown = [name for name in options.layers if name not in known]
    if unknown:
        raise StriateError(f"unknown layer(s) {', '.join(unknown)}: {manifest.name} exports {', '.join(known)}")
    if not options.layers:
        raise StriateError("name at least one layer")
    if options.top_k < 0:
        raise StriateError("top_k must be >= 0")
    if options.threads < 0:
        raise StriateError("threads must be >= 0 (0: onnxruntime's default, every core)")


class BundleEmbedder:
    def __init__(self, options: EmbedOptions) -> None:
        bundle = Path(options.bundle)
        self.manifest = Manifest.load(bundle)
        check_options(self.manifest, options)
        self.options = options
        settings = Settings(device=options.device, intra_op_threads=options.threads, inter_op_threads=1)
        self.graph = Graph(bundle / self.manifest.graph, settings)
        self.schema = output_schema(self.manifest, options)
        self.outputs = [self.manifest.layer(name).output for name in options.layers]  # type: ignore[union-attr]
        self.outputs.append(self.manifest.logits_output)

    def _load(self, path: str) -> np.ndarray:
        return preprocess(decode_image(read_bytes(path)), self.manifest.preprocessing)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids, paths = batch.column(ID).to_pylist(), batch.column(PATH).to_pylist()
        tensors: list[np.ndarray] = []
        good: list[int] = []
        errors: list[str | None] = [None] * len(paths)
        for i, path in enumerate(paths):
            try:
                tensors.append(self._load(path))
                good.append(i)
            except (OSError, ImageDecodeError) as exc:
                errors[i] = f"{type(exc).__name__}: {exc}"
        results = {}
        if good:
            feeds = {self.manifest.input.name: np.stack(tensors)}
            results = self.graph.run(feeds, self.outputs)
        return self._table(ids, paths, good, errors, results)

    def _table(self, ids, paths, good, errors, results) -> pa.Table:
        n = len(ids)
        columns: dict[str, pa.Array] = {ID: pa.array(ids, pa.string()), PATH: pa.array(paths, pa.string())}
        for name, output in zip(self.options.layers, self.outputs, strict=False):
            columns[name] = _rows(results.get(output), good, n, self.schema.field(name).type)
        if self.options.top_k:
            k = min(self.options.top_k, len(self.manifest.labels))
            labels = np.asarray(self.manifest.labels, dtype=object)
            probs = softmax(results[self.manifest.logits_output]) if good else np.zeros((0, 1), np.float32)
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            picked = np.take_along_axis(probs, order, axis=1).astype(np.float32)
            by_row = dict(zip(good, range(len(good)), strict=True))
            columns[TOP_K_LABELS] = pa.array(
                [labels[order[by_row[i]]].tolist() if i in by_row else None for i in range(n)],
                pa.list_(pa.string()),
            )
            columns[TOP_K_INDICES] = pa.array(
                [order[by_row[i]].astype(np.int32) if i in by_row else None for i in range(n)], pa.list_(pa.int32())
            )
            columns[TOP_K_PROBS] = pa.array(
                [picked[by_row[i]] if i in by_row else None for i in range(n)], pa.list_(pa.float32())
            )
        columns[ERROR] = pa.array(errors, pa.string())
        return pa.table(columns, schema=self.schema)


def _rows(values: np.ndarray | None, good: list[int], n: int, type_: pa.DataType) -> pa.Array:
    """[len(good), D] vectors -> a length-n fixed-size-list column, null where the image failed."""
    if values is None:
        return pa.nulls(n, type_)
    dim = type_.list_size
    flat = np.zeros((n, dim), dtype=np.float32)
    flat[good] = values.reshape(len(good), dim)
    valid = np.zeros(n, dtype=bool)
    valid[good] = True
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim, mask=pa.array(~valid))


def resolve_bundle(path: str | Path) -> Path:
    """A bundle folder (holding manifest.json), or a model folder: its highest numbered version."""
    path = Path(path).expanduser()
    if (path / "manifest.json").is_file():
        return path
    versions = sorted((int(p.name), p) for p in path.glob("*") if p.name.isdigit() and (p / "manifest.json").is_file())
    if not versions:
        raise StriateError(f"{path} is not a bundle (no manifest.json) nor a model folder with numbered versions")
    return versions[-1][1]
