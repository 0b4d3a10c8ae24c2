"""How `striate serve` uses the machine: worker processes and onnxruntime threads, chosen from the
cores this process may use.

Measured on 2 cores (bench/service_bench.py, README "Service performance"): a small model's
throughput is bound by Python's per-request work, which one process runs on one core at a time, so
one worker process per core (each with one intra-op thread) serves the most; a big model's
single-request latency falls with intra-op threads, which one worker with every core gets. The
default is one worker per core; STRIATE_WORKERS=1 gives one process all the cores.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from service.settings import Settings
from striate.errors import StriateError

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may run on: its CPU affinity, capped by a container's CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@dataclass(frozen=True)
class Plan:
    workers: int  # server processes sharing the listening socket
    intra_op_threads: int  # per worker (0: onnxruntime's default)
    cores: int
    reason: str

    def describe(self) -> str:
        threads = self.intra_op_threads or "onnxruntime's default"
        return (
            f"{self.workers} worker process(es) x {threads} intra-op thread(s) on {self.cores} usable core(s) "
            f"({self.reason}; STRIATE_WORKERS and STRIATE_INTRA_OP_THREADS override)"
        )


def plan(settings: Settings, cores: int | None = None) -> Plan:
    """Workers and intra-op threads for `settings` on `cores` (default: `usable_cores()`)."""
    cores = cores or usable_cores()
    if settings.model_control == "explicit":
        if settings.workers > 1:
            raise StriateError(
                "STRIATE_WORKERS > 1 cannot be combined with model_control=explicit: a load or unload "
                "through the repository API would reach one worker only; use one worker (and replicas)"
            )
        workers, reason = 1, "one worker: model_control=explicit keeps one repository"
    elif settings.workers:
        workers, reason = settings.workers, "STRIATE_WORKERS"
    else:
        workers, reason = cores, "one worker per core (the default)"
    threads = settings.intra_op_threads or max(1, cores // workers)
    return Plan(workers, threads, cores, reason)
