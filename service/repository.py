"""The model repository: a small state machine per model version, driven by start-up, polling and
Triton's repository API alike.

Layout `<model_dir>/<name>/<version>/manifest.json`, plus an optional `<name>/config.json` version
policy (service/policy.py). The highest served version of a name is its default; every served
version is addressable. A version is LOADING while its sessions open, READY once it serves,
UNAVAILABLE (with the reason) when it failed, was left out by the policy or was unloaded, and
UNLOADING while the requests it holds finish.

Changes are atomic: new bundles are opened and warmed up off the event loop, then the served table
is swapped in one assignment. A request leases the `LoadedModel` it resolved, so it finishes on the
version it started on; a retired version is closed only once its leases are returned (or the drain
grace has passed). A bundle that fails to load leaves what was serving in place and shows its error.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from service.batcher import Batcher
from service.bundles import BundleError, LoadedModel, bundle_signature, open_bundle, parse_version
from service.errors import NotFound
from service.metrics import Metrics
from service.policy import CONFIG_FILE, load_config
from service.runtime import Graph, providers_for
from service.settings import Settings

__all__ = ["BrokenBundle", "LoadedModel", "Repository", "State"]

log = logging.getLogger("striate.service")


class State(StrEnum):
    """Triton's model states, as the repository index reports them."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


@dataclass(frozen=True)
class VersionStatus:
    state: State
    reason: str = ""
    error: str = ""  # set when a load failed (the version may still serve an older copy)
    signature: tuple = ()  # the files that failed, so that polling retries only changed ones


@dataclass(frozen=True)
class BrokenBundle:
    name: str
    version: str
    path: Path
    error: str


@dataclass
class _Plan:
    """What one rescan of a model decided (built off the loop, applied on it)."""

    name: str
    opened: dict[int, LoadedModel] = field(default_factory=dict)
    keep: set[int] = field(default_factory=set)
    status: dict[str, VersionStatus] = field(default_factory=dict)


class Repository:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.root = Path(settings.model_dir)
        self.models: dict[str, dict[int, LoadedModel]] = {}  # served; replaced whole, never edited
        self.status: dict[str, dict[str, VersionStatus]] = {}  # name -> version folder -> status
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="striate-ort")
        self._lock: asyncio.Lock | None = None
        self._poller: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()

    # -- what is there -----------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        """Model folders in the repository (hidden ones skipped)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    @property
    def broken(self) -> list[BrokenBundle]:
        return [
            BrokenBundle(name, version, self.root / name / version, st.error)
            for name, versions in sorted(self.status.items())
            for version, st in sorted(versions.items())
            if st.error
        ]

    def index(self) -> list[dict]:
        """Triton's repository index: every model folder and version, with its state and reason."""
        rows = []
        for name in sorted(set(self.model_names()) | set(self.status)):
            versions = self.status.get(name)
            if not versions:
                rows.append({"name": name, "state": State.UNAVAILABLE.value, "reason": "not loaded"})
                continue
            for version, st in sorted(versions.items(), key=lambda kv: (parse_version(kv[0]) or 0, kv[0])):
                row = {"name": name, "version": version, "state": st.state.value}
                if st.reason or st.error:
                    row["reason"] = st.reason or st.error
                rows.append(row)
        return rows

    # -- loading -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Scan the model dir and load every bundle (blocking; call before serving, then `start`)."""
        providers_for(self.settings.device)  # a device that cannot be had fails start-up, not each bundle
        if not self.root.is_dir():
            log.warning("model dir %s does not exist: serving no models", self.root)
        for name in self.startup_names():
            self._apply(self._plan(name, retry_failed=True))
        self._count()

    def startup_names(self) -> list[str]:
        """Every model, or in explicit mode those STRIATE_STARTUP_MODELS names (Triton's --load-model)."""
        names, wanted = self.model_names(), self.settings.startup_models.strip()
        if self.settings.model_control != "explicit" or wanted == "*":
            return names
        chosen = {n.strip() for n in wanted.split(",") if n.strip()}
        missing = sorted(chosen - set(names))
        if missing:
            log.warning("STRIATE_STARTUP_MODELS names models not in %s: %s", self.root, missing)
        return [n for n in names if n in chosen]

    def _plan(self, name: str, retry_failed: bool) -> _Plan:
        """Rescan one model folder and open what is new or changed (blocking)."""
        plan = _Plan(name)
        folder = self.root / name
        served = self.models.get(name, {})
        previous = self.status.get(name, {})
        if not folder.is_dir():
            return plan  # gone: everything it served retires
        try:
            policy = load_config(folder).version_policy
        except ValueError as exc:  # a bad config changes nothing that serves
            plan.keep = set(served)
            plan.status = {str(v): VersionStatus(State.READY) for v in served}
            plan.status[CONFIG_FILE] = VersionStatus(State.UNAVAILABLE, error=str(exc))
            log.error("model %s: %s", name, exc)
            return plan
        versions: dict[int, Path] = {}
        for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            version = parse_version(path.name)
            if version is None:
                error = "version folders must be positive integers written in ASCII digits (1, 2, ...)"
                plan.status[path.name] = VersionStatus(State.UNAVAILABLE, error=error)
            else:
                versions[version] = path
        wanted = policy.select(list(versions))
        for version in sorted(set(versions) - set(wanted)):
            reason = f"not selected by the version policy ({policy.describe()})"
            plan.status[str(version)] = VersionStatus(State.UNAVAILABLE, reason=reason)
        for version in wanted:
            key, path = str(version), versions[version]
            signature, current, before = bundle_signature(path), served.get(version), previous.get(key)
            if current is not None and current.signature == signature:
                plan.keep.add(version)
                plan.status[key] = VersionStatus(State.READY)
                continue
            if before is not None and before.error and before.signature == signature and not retry_failed:
                plan.status[key] = before  # unchanged since it failed: do not retry on every poll
                if current is not None:
                    plan.keep.add(version)
                continue
            self._set_status(name, key, VersionStatus(State.LOADING))
            try:
                plan.opened[version] = open_bundle(name, path, self.settings, self._batcher)
                plan.status[key] = VersionStatus(State.READY)
                log.info("loaded %s/%d from %s on %s", name, version, path, plan.opened[version].provider)
            except BundleError as exc:
                log.error("bundle %s failed to load: %s", path, exc)
                if current is not None:  # the copy already serving stays, and the error shows
                    plan.keep.add(version)
                    plan.status[key] = VersionStatus(State.READY, error=str(exc), signature=signature)
                else:
                    plan.status[key] = VersionStatus(State.UNAVAILABLE, error=str(exc), signature=signature)
        return plan

    def _apply(self, plan: _Plan) -> list[LoadedModel]:
        """Swap the plan in (one assignment); returns the models it retired, still to drain."""
        served = self.models.get(plan.name, {})
        new = {v: served[v] for v in plan.keep} | plan.opened
        retired = [m for v, m in served.items() if new.get(v) is not m]
        models = {k: v for k, v in self.models.items() if k != plan.name}
        if new:
            models[plan.name] = dict(sorted(new.items()))
        self.models = models
        status = dict(plan.status)
        for model in retired:
            status.setdefault(str(model.version), VersionStatus(State.UNLOADING))
        self.status = {k: v for k, v in self.status.items() if k != plan.name} | ({plan.name: status} if status else {})
        return retired

    def _set_status(self, name: str, key: str, status: VersionStatus) -> None:
        """Copy on write: the loading thread and readers on the event loop never share a dict in change."""
        self.status = {**self.status, name: {**self.status.get(name, {}), key: status}}

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

    def _count(self) -> None:
        self.metrics.models_loaded.set(sum(len(v) for v in self.models.values()))
        self.metrics.models_broken.set(len(self.broken))

    # -- control (on the event loop) -----------------------------------------------------------------
    async def sync(self, name: str, retry_failed: bool = True) -> _Plan:
        """Bring one model in line with its folder and policy: load new or changed versions, retire
        the ones gone or left out. Serialised with every other change."""
        assert self._lock is not None, "call start() first"
        async with self._lock:
            plan = await asyncio.to_thread(self._plan, name, retry_failed)
            for model in plan.opened.values():
                model.start()
            self._retire(self._apply(plan))
            self._count()
            return plan

    async def sync_all(self) -> None:
        """One poll: every model folder present, and every model served whose folder went away."""
        for name in sorted(set(self.model_names()) | set(self.models) | set(self.status)):
            await self.sync(name, retry_failed=False)

    async def unload(self, name: str) -> list[LoadedModel]:
        """Stop routing to every version of `name`; they close once their requests finished."""
        assert self._lock is not None, "call start() first"
        async with self._lock:
            if name not in self.models and name not in self.status and name not in self.model_names():
                raise NotFound(f"no model named {name!r} in the repository")
            retired = list(self.models.get(name, {}).values())
            self.models = {k: v for k, v in self.models.items() if k != name}
            self.status = self.status | {name: {str(m.version): VersionStatus(State.UNLOADING) for m in retired}}
            self._count()
        tasks = self._retire(retired, reason="unloaded")
        if tasks:
            await asyncio.wait(tasks)
        return retired

    def _retire(self, retired: list[LoadedModel], reason: str = "unloaded") -> list[asyncio.Task]:
        tasks = [asyncio.get_running_loop().create_task(self._drain_and_close(m, reason)) for m in retired]
        self._retiring.update(tasks)
        for task in tasks:
            task.add_done_callback(self._retiring.discard)
        return tasks

    async def _drain_and_close(self, model: LoadedModel, reason: str) -> None:
        if not await model.drain(self.settings.drain_grace):
            log.warning(
                "%s/%d still had %d request(s) after %.0f s (STRIATE_DRAIN_GRACE); closing it anyway",
                model.name,
                model.version,
                model.inflight,
                self.settings.drain_grace,
            )
        await model.close()
        key = str(model.version)
        st = self.status.get(model.name, {}).get(key)
        if st is not None and st.state is State.UNLOADING:
            self._set_status(model.name, key, VersionStatus(State.UNAVAILABLE, reason=reason))
        log.info("retired %s/%d", model.name, model.version)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                await self.sync_all()
            except Exception:  # a failed poll must not stop the next one
                log.exception("polling the model repository failed")

    # -- serving -----------------------------------------------------------------------------------
    def all_models(self) -> list[LoadedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        for model in self.all_models():
            model.start()
        if self.settings.model_control == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for model in self.all_models():
            await model.close()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def served_versions(self, name: str) -> list[int]:
        return sorted(self.models.get(name, {}))

    @property
    def ready(self) -> bool:
        return bool(self.models)

    def versions(self, name: str) -> dict[int, LoadedModel]:
        versions = self.models.get(name)
        if not versions:
            known = self.status.get(name, {}).values()
            errors = [st.error for st in known if st.error]
            if errors:
                raise NotFound(f"model {name!r} failed to load: {errors[0]}")
            reasons = [st.reason for st in known if st.reason]
            if reasons:
                raise NotFound(f"model {name!r} is not available: {reasons[0]}")
            raise NotFound(f"no model named {name!r}; available: {sorted(self.models) or 'none'}")
        return versions

    def get(self, name: str, version: str | int | None = None) -> LoadedModel:
        """The named model at `version` (default: its latest); `NotFound` names what exists."""
        versions = self.versions(name)
        if version is None or version == "":
            return versions[max(versions)]
        number = version if isinstance(version, int) else parse_version(version)
        if number not in versions:
            st = self.status.get(name, {}).get(str(number))
            if st is not None and (st.error or st.reason):
                what = f"failed to load: {st.error}" if st.error else f"is not available: {st.reason}"
                raise NotFound(f"model {name!r} version {number} {what}; serving versions: {sorted(versions)}")
            hint = "" if number is not None else " (versions are positive integers in ASCII digits)"
            raise NotFound(f"model {name!r} has no version {str(version)!r}{hint}; versions: {sorted(versions)}")
        return versions[number]
