"""One bundle (`<model_dir>/<name>/<version>/`) opened into a `LoadedModel`, or refused with the reason.

Opening is blocking (onnxruntime sessions, a warm-up run): the repository calls it off the event
loop. A refused bundle raises `BundleError` whose message is what operators see in the model list.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from service.batcher import Batcher
from service.runtime import Graph
from service.settings import Settings
from striate.manifest import Manifest

# A version is a positive integer in ASCII digits, without leading zeros (as folder and URL segment):
# str.isdigit() would also take "³" (int() then fails) and "١" (read as 1).
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,17}")

BatcherFactory = Callable[[str, int, str, Graph], Batcher]


def parse_version(text: str) -> int | None:
    """The version a folder name or URL segment denotes, or None when it is not one."""
    return int(text) if VERSION_PATTERN.fullmatch(text) else None


class BundleError(Exception):
    """A bundle that cannot be served; the message says why."""


@dataclass
class LoadedModel:
    name: str
    version: int
    path: Path
    manifest: Manifest
    graph: Graph
    explain: Graph | None
    batcher: Batcher = field(repr=False)
    explain_batcher: Batcher | None = field(default=None, repr=False)
    # One pruned explain graph per gradient method, opened on first use (service/explain_graphs.py).
    method_batchers: dict[str, Batcher] = field(default_factory=dict, repr=False)
    make_batcher: BatcherFactory | None = field(default=None, repr=False)
    signature: tuple = field(default=(), repr=False)  # the files it was loaded from (change detection)
    inflight: int = field(default=0, repr=False)  # requests holding a lease
    _idle: asyncio.Event | None = field(default=None, repr=False)

    @property
    def provider(self) -> str:
        return self.graph.provider

    def batchers(self) -> list[Batcher]:
        explain = [self.explain_batcher] if self.explain_batcher is not None else []
        return [self.batcher, *explain, *self.method_batchers.values()]

    @contextlib.contextmanager
    def lease(self) -> Iterator[LoadedModel]:
        """Held by each request for its whole life, so an unload or swap can wait for it to finish."""
        self.inflight += 1
        try:
            yield self
        finally:
            self.inflight -= 1
            if self.inflight == 0 and self._idle is not None:
                self._idle.set()

    async def drain(self, grace_s: float) -> bool:
        """Wait (at most `grace_s`) until no request holds a lease; True when none does."""
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
        return self.inflight == 0

    def start(self) -> None:
        for batcher in self.batchers():
            batcher.start()

    async def close(self) -> None:
        for batcher in self.batchers():
            await batcher.close()


def bundle_signature(path: Path) -> tuple:
    """(name, size, mtime) of the bundle's files: a changed tuple means a changed bundle."""
    try:
        return tuple(
            sorted((p.name, st.st_size, st.st_mtime_ns) for p in path.iterdir() if p.is_file() for st in [p.stat()])
        )
    except OSError:
        return ()


def check_bundle(manifest: Manifest, graph: Graph, explain: Graph | None) -> None:
    """Refuse a bundle whose graphs disagree with its manifest (names, channels, size, classes)."""
    spec = manifest.input
    if spec.name not in graph.inputs:
        raise BundleError(f"model graph has no input {spec.name!r} (it has {sorted(graph.inputs)})")
    shape = graph.inputs[spec.name].shape
    if len(shape) != 4 or any(
        isinstance(d, int) and d != want
        for d, want in zip(shape[1:], (spec.channels, spec.height, spec.width), strict=True)
    ):
        raise BundleError(f"model input shape {list(shape)} disagrees with the manifest's {spec}")
    missing = [o.name for o in manifest.outputs if o.name not in graph.outputs]
    if missing:
        raise BundleError(f"model graph lacks outputs named in the manifest: {missing}")
    logits_spec = next(o for o in manifest.outputs if o.name == manifest.logits_output)
    classes = {d for d in (*logits_spec.shape[1:2], *graph.outputs[manifest.logits_output].shape[1:2]) if _known(d)}
    _check_classes(manifest, classes)
    if manifest.explain is not None and manifest.explain.graph is not None:
        if explain is None:
            raise BundleError("manifest names an explain graph that did not load")
        ex = manifest.explain
        for name in (spec.name, ex.targets_input):
            if name not in explain.inputs:
                raise BundleError(f"explain graph has no input {name!r}")
        for name in (
            *ex.cam_outputs.values(),
            ex.logits_output,
            *([ex.explained_output] if ex.explained_output else []),
        ):
            if name not in explain.outputs:
                raise BundleError(f"explain graph has no output {name!r}")


def _known(dim) -> bool:
    return isinstance(dim, int) and dim > 0


def _check_classes(manifest: Manifest, classes: set[int]) -> None:
    """Labels and logits must pair one to one, or every top-k would index past the labels."""
    wrong = sorted(k for k in classes if k != len(manifest.labels))
    if wrong:
        raise BundleError(
            f"the manifest lists {len(manifest.labels)} labels but the graph gives {wrong[0]} logits per image; "
            "re-export the bundle so that labels and classes agree"
        )


def open_bundle(name: str, path: Path, settings: Settings, make_batcher: BatcherFactory) -> LoadedModel:
    """Load, check and warm up one bundle (blocking); `BundleError` says why it cannot be served."""
    version = parse_version(path.name)
    if version is None:
        raise BundleError("version folders must be positive integers written in ASCII digits (1, 2, ...)")
    signature = bundle_signature(path)
    try:
        manifest = Manifest.load(path)
        if (manifest.name, manifest.version) != (name, version):
            raise BundleError(
                f"manifest says {manifest.name}/{manifest.version} but the bundle sits at {name}/{version}"
            )
        graph = Graph(path / manifest.graph, settings)
        ex = manifest.explain
        explain = Graph(path / ex.graph, settings) if ex is not None and ex.graph else None
        check_bundle(manifest, graph, explain)
        model = LoadedModel(
            name,
            version,
            path,
            manifest,
            graph,
            explain,
            batcher=make_batcher(name, version, "model", graph),
            explain_batcher=make_batcher(name, version, "explain", explain) if explain else None,
            signature=signature,
            make_batcher=make_batcher,
        )
        warm_up(model)
    except BundleError:
        raise
    except FileNotFoundError as exc:
        raise BundleError(f"missing file: {exc.filename or exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors())
        raise BundleError(f"invalid manifest: {problems}"[:2000]) from None
    except Exception as exc:  # any failure is this bundle's problem only
        raise BundleError(f"{type(exc).__name__}: {exc}".strip()[:2000]) from None
    return model


def warm_up(model: LoadedModel) -> None:
    """One run per graph (first-call allocations, and the logits' real width checked against the
    labels), which also seeds each batcher's run-time estimate."""
    spec, m = model.manifest.input, model.manifest
    image = np.zeros((1, spec.channels, spec.height, spec.width), dtype=np.float32)
    feeds = {spec.name: image}
    runs = [(model.graph, model.batcher, feeds, m.logits_output)]
    if model.explain is not None and m.explain is not None:
        ex = m.explain
        target = np.full((1,) if ex.single_target else (1, 1), -1, np.int64)
        explain_feeds = feeds | {ex.targets_input: target}
        runs.append((model.explain, model.explain_batcher, explain_feeds, ex.logits_output))
    for graph, batcher, graph_feeds, logits in runs:
        outputs = [logits] if graph is model.graph else [logits, *m.explain.cam_outputs.values()]
        out = graph.run(graph_feeds, outputs)[logits]
        if out.ndim != 2:
            raise BundleError(f"logits {logits!r} have shape {list(out.shape)}; expected [N, classes]")
        _check_classes(m, {out.shape[1]})
        start = time.perf_counter()
        graph.run(graph_feeds, outputs)
        batcher.recent_run_s = time.perf_counter() - start
