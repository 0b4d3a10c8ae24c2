"""Every core: `striate serve` chooses worker processes and onnxruntime threads from the machine,
says what it chose, replaces a worker that dies, and drains every worker on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from service_fixtures import REPO, digits_png_bytes, free_port, make_settings

from service.parallelism import plan, usable_cores
from striate.errors import StriateError

PNG = {"content-type": "image/png"}


@pytest.mark.parametrize(
    ("overrides", "cores", "expected"),
    [
        ({}, 2, (2, 1)),  # small models serve most with one process per core
        ({}, 8, (8, 1)),
        ({"workers": 1}, 8, (1, 8)),  # one process gets every core as intra-op threads
        ({"workers": 2}, 8, (2, 4)),
        ({"workers": 2, "intra_op_threads": 3}, 8, (2, 3)),
        ({"model_control": "explicit"}, 4, (1, 4)),  # one repository, so one worker
    ],
)
def test_the_plan_follows_the_cores_and_the_settings(tmp_path, overrides, cores, expected):
    chosen = plan(make_settings(tmp_path, **overrides), cores=cores)
    assert (chosen.workers, chosen.intra_op_threads) == expected
    assert f"{expected[0]} worker process(es)" in chosen.describe() and f"{cores} usable core(s)" in chosen.describe()


def test_several_workers_with_explicit_model_control_are_refused(tmp_path):
    with pytest.raises(StriateError, match="one worker only"):
        plan(make_settings(tmp_path, model_control="explicit", workers=2), cores=4)


def test_a_container_cpu_quota_caps_the_usable_cores(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    affinity = len(os.sched_getaffinity(0))
    cpu_max.write_text("50000 100000\n")  # half a core: still one worker
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == affinity
    assert usable_cores(tmp_path / "absent") == affinity


def _workers(pid: int) -> set[int]:
    """The spawned worker processes of `pid` (not multiprocessing's resource tracker)."""
    found = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            found.add(int(child))
    return found


def _classify(url: str) -> int:
    with httpx.Client(base_url=url, timeout=30) as c:  # a new connection each time
        return c.post("/v1/models/tiny/classify", content=digits_png_bytes(1), headers=PNG).status_code


def _wait(predicate, seconds: float = 90.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_two_workers_share_the_port_a_dead_one_is_replaced_and_sigterm_stops_all(model_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIATE_")}
    env |= {"PYTHONPATH": str(REPO), "STRIATE_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "striate.cli", "serve", "--model-dir", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--workers", "2"], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz").status_code == 200 and len(_workers(proc.pid)) == 2
            except httpx.TransportError:
                return False

        _wait(ready)
        first = _workers(proc.pid)
        assert all(_classify(url) == 200 for _ in range(6))
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        replaced = _wait(lambda: (w := _workers(proc.pid)) and len(w) == 2 and victim not in w and w)
        assert first - {victim} < replaced
        _wait(lambda: _classify(url) == 200 if ready() else False)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "serving with 2 worker process(es)" in stderr
    assert f"worker {victim} exited" in stderr
    assert not any(Path(f"/proc/{pid}").exists() for pid in replaced)
