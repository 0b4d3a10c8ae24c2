"""The model repository: every bundle under the model dir, loaded once at start-up.

Layout `<model_dir>/<name>/<version>/manifest.json`. The highest loaded version of a name is its
default; every version is addressable. A bundle that fails to load is kept as a `BrokenBundle`
(logged, listed with its error) and does not stop the others.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from service.batcher import Batcher
from service.errors import NotFound
from service.metrics import Metrics
from service.runtime import Graph, providers_for
from service.settings import Settings
from striate.manifest import Manifest

log = logging.getLogger("striate.service")


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

    @property
    def provider(self) -> str:
        return self.graph.provider


@dataclass(frozen=True)
class BrokenBundle:
    name: str
    version: str
    path: Path
    error: str


def check_bundle(manifest: Manifest, graph: Graph, explain: Graph | None) -> None:
    """Refuse a bundle whose graphs disagree with its manifest (names, channels, size)."""
    spec = manifest.input
    if spec.name not in graph.inputs:
        raise ValueError(f"model graph has no input {spec.name!r} (it has {sorted(graph.inputs)})")
    shape = graph.inputs[spec.name].shape
    if len(shape) != 4 or any(
        isinstance(d, int) and d != want
        for d, want in zip(shape[1:], (spec.channels, spec.height, spec.width), strict=True)
    ):
        raise ValueError(f"model input shape {list(shape)} disagrees with the manifest's {spec}")
    missing = [o.name for o in manifest.outputs if o.name not in graph.outputs]
    if missing:
        raise ValueError(f"model graph lacks outputs named in the manifest: {missing}")
    if manifest.explain is not None and manifest.explain.graph is not None:
        if explain is None:
            raise ValueError("manifest names an explain graph that did not load")
        ex = manifest.explain
        for name in (spec.name, ex.targets_input):
            if name not in explain.inputs:
                raise ValueError(f"explain graph has no input {name!r}")
        for name in (
            *ex.cam_outputs.values(),
            ex.logits_output,
            *([ex.explained_output] if ex.explained_output else []),
        ):
            if name not in explain.outputs:
                raise ValueError(f"explain graph has no output {name!r}")


class Repository:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.models: dict[str, dict[int, LoadedModel]] = {}
        self.broken: list[BrokenBundle] = []
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="striate-ort")

    # -- loading ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Scan the model dir and load every bundle (blocking; call before serving)."""
        providers_for(self.settings.device)  # a device that cannot be had fails start-up, not each bundle
        root = Path(self.settings.model_dir)
        if not root.is_dir():
            log.warning("model dir %s does not exist: serving no models", root)
            return
        for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for version_dir in sorted(p for p in name_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                self._load_one(name_dir.name, version_dir)
        self.metrics.models_loaded.set(sum(len(v) for v in self.models.values()))
        self.metrics.models_broken.set(len(self.broken))

    def _load_one(self, name: str, path: Path) -> None:
        try:
            if not path.name.isdigit() or int(path.name) < 1:
                raise ValueError("version folders must be positive integers")
            version = int(path.name)
            manifest = Manifest.load(path)
            if (manifest.name, manifest.version) != (name, version):
                raise ValueError(
                    f"manifest says {manifest.name}/{manifest.version} but the bundle sits at {name}/{version}"
                )
            graph = Graph(path / manifest.graph, self.settings)
            ex = manifest.explain
            explain = Graph(path / ex.graph, self.settings) if ex is not None and ex.graph else None
            check_bundle(manifest, graph, explain)
        except FileNotFoundError as exc:
            self._broken(name, path, f"missing file: {exc.filename or exc}")
            return
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors())
            self._broken(name, path, f"invalid manifest: {problems}"[:2000])
            return
        except Exception as exc:  # any failure is this bundle's problem only
            self._broken(name, path, f"{type(exc).__name__}: {exc}".strip()[:2000])
            return
        model = LoadedModel(
            name,
            version,
            path,
            manifest,
            graph,
            explain,
            batcher=self._batcher(name, version, "model", graph),
            explain_batcher=self._batcher(name, version, "explain", explain) if explain else None,
        )
        self._warm_up(model)
        self.models.setdefault(name, {})[version] = model
        log.info(
            "loaded %s/%d from %s on %s%s",
            name,
            version,
            path,
            graph.provider,
            f" (explain on {explain.provider})" if explain else "",
        )

    def _broken(self, name: str, path: Path, error: str) -> None:
        log.error("bundle %s failed to load: %s", path, error)
        self.broken.append(BrokenBundle(name, path.name, path, error))

    def _batcher(self, name: str, version: int, graph_name: str, graph: Graph) -> Batcher:
        s, labels = self.settings, (name, str(version), graph_name)
        batch_size, seconds = self.metrics.batch_size.labels(*labels), self.metrics.inference.labels(*labels)
        depth = self.metrics.queue_depth.labels(*labels)

        def observe(images: int, took: float) -> None:
            batch_size.observe(images)
            seconds.observe(took)

        return Batcher(
            graph.run,
            self._executor,
            s.max_batch_size,
            s.max_batch_delay_ms / 1000.0,
            s.max_queue,
            observe=observe,
            queue_gauge=depth.set,
        )

    @staticmethod
    def _warm_up(model: LoadedModel) -> None:
        """One run per graph (first-call allocations), which also seeds each batcher's run-time estimate."""
        spec = model.manifest.input
        image = np.zeros((1, spec.channels, spec.height, spec.width), dtype=np.float32)
        feeds = {spec.name: image}
        runs = [(model.graph, model.batcher, feeds, [model.manifest.logits_output])]
        if model.explain is not None and model.manifest.explain is not None:
            ex = model.manifest.explain
            target = np.full((1,) if ex.single_target else (1, 1), -1, np.int64)
            explain_feeds = feeds | {ex.targets_input: target}
            runs.append((model.explain, model.explain_batcher, explain_feeds, list(ex.cam_outputs.values())))
        for graph, batcher, graph_feeds, outputs in runs:
            graph.run(graph_feeds, outputs)
            start = time.perf_counter()
            graph.run(graph_feeds, outputs)
            batcher.recent_run_s = time.perf_counter() - start

    # -- serving ---------------------------------------------------------------------------------
    def all_models(self) -> list[LoadedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    async def start(self) -> None:
        for model in self.all_models():
            model.batcher.start()
            if model.explain_batcher is not None:
                model.explain_batcher.start()

    async def close(self) -> None:
        for model in self.all_models():
            await model.batcher.close()
            if model.explain_batcher is not None:
                await model.explain_batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return bool(self.models)

    def versions(self, name: str) -> dict[int, LoadedModel]:
        versions = self.models.get(name)
        if not versions:
            broken = [b for b in self.broken if b.name == name]
            if broken:
                raise NotFound(f"model {name!r} failed to load: {broken[0].error}")
            raise NotFound(f"no model named {name!r}; available: {sorted(self.models) or 'none'}")
        return versions

    def get(self, name: str, version: str | int | None = None) -> LoadedModel:
        """The named model at `version` (default: its latest); `NotFound` names what exists."""
        versions = self.versions(name)
        if version is None or version == "":
            return versions[max(versions)]
        key = str(version)
        if not key.isdigit() or int(key) not in versions:
            raise NotFound(f"model {name!r} has no version {key!r}; versions: {sorted(versions)}")
        return versions[int(key)]
