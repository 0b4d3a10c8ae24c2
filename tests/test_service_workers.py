"""Every core: `striate serve` chooses worker processes and onnxruntime threads from the machine,
says what it chose, replaces a worker that dies, and drains every worker on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
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


@contextlib.contextmanager
def _serve_workers(model_dir: Path, workers: int = 2, **env: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`striate serve --workers N` in a child process, once every worker answers; killed if left running."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STRIATE_")}
    environment |= {"PYTHONPATH": str(REPO), "STRIATE_DEVICE": "cpu"} | env
    cmd = [sys.executable, "-m", "striate.cli", "serve", "--model-dir", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--workers", str(workers)],
        env=environment,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait(lambda: _ready(proc, f"http://127.0.0.1:{port}", workers))
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too: they hold the stderr pipe open
            proc.communicate()


def _ready(proc: subprocess.Popen, url: str, workers: int = 2) -> bool:
    """Ready, with every worker process up (one worker is the server process itself)."""
    spawned = workers if workers > 1 else 0
    try:
        return httpx.get(f"{url}/readyz").status_code == 200 and len(_workers(proc.pid)) == spawned
    except httpx.TransportError:
        return False


def _listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:`port` (from /proc/net/tcp: state 0A is LISTEN)."""
    wanted = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1] == wanted and row.split()[3] == "0A")


def test_two_workers_share_the_port_a_dead_one_is_replaced_and_sigterm_stops_all(model_dir):
    with _serve_workers(model_dir) as (proc, url):
        first = _workers(proc.pid)
        port = int(url.rsplit(":", 1)[1])
        # one socket per worker (SO_REUSEPORT): the kernel spreads connections evenly over them
        assert _listeners(port) == 2
        assert all(_classify(url) == 200 for _ in range(6))
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        replaced = _wait(lambda: (w := _workers(proc.pid)) and len(w) == 2 and victim not in w and w)
        assert first - {victim} < replaced
        _wait(lambda: _classify(url) == 200 if _ready(proc, url) else False)
        assert _listeners(port) == 2  # the replacement took over its predecessor's socket
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert "serving with 2 worker process(es)" in stderr
    assert f"worker {victim} exited" in stderr
    assert not any(Path(f"/proc/{pid}").exists() for pid in replaced)


def _sample(metrics: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels} in /metrics")


def test_metrics_count_every_worker_even_those_that_died(model_dir, tmp_path):
    """Any worker's /metrics reports the whole server: after both first workers are killed, the two
    that replaced them still count the requests the dead ones answered, and drop the dead ones' gauges."""
    shared = tmp_path / "metrics"
    with _serve_workers(model_dir, PROMETHEUS_MULTIPROC_DIR=str(shared)) as (proc, url):
        first = _workers(proc.pid)
        assert all(_classify(url) == 200 for _ in range(8))
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        _wait(lambda: not _workers(proc.pid) & first and _ready(proc, url))
        metrics = httpx.get(f"{url}/metrics").text
        listing = httpx.get(f"{url}/v1/models").json()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    classify = {"model": "tiny", "endpoint": "/v1/models/{name}/classify", "method": "POST", "status": "200"}
    assert _sample(metrics, "striate_requests_total", **classify) == 8
    assert _sample(metrics, "striate_request_duration_seconds_count", model="tiny") == 8
    # per live worker, not summed over two
    assert _sample(metrics, "striate_models_loaded") == sum(len(m["versions"]) for m in listing["models"])
    assert _sample(metrics, "striate_models_broken") == len(listing["broken"]) > 0
    # the dead workers' counters were summed above; their gauges are gone (a worker that had loaded its
    # models wrote some), so a scrape never adds a dead worker's queue to the live ones'
    gauges = [f.name for f in shared.glob("gauge_*.db")]
    assert gauges and not [name for name in gauges for pid in first if name.endswith(f"_{pid}.db")]


def test_a_port_in_use_is_one_line_before_any_worker_starts(model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRIATE_")} | {"PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "striate.cli", "serve", "--model-dir", str(model_dir), "--port", str(port)]
        done = subprocess.run([*cmd, "--workers", "2"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_single_worker_with_multiprocess_metrics_starts_from_a_clean_directory(model_dir, tmp_path):
    """PROMETHEUS_MULTIPROC_DIR set by the operator: a restarted server does not count its predecessor's requests."""
    shared = str(tmp_path / "metrics")
    counts = []
    for requests in (3, 1):
        with _serve_workers(model_dir, workers=1, PROMETHEUS_MULTIPROC_DIR=shared) as (proc, url):
            assert all(_classify(url) == 200 for _ in range(requests))
            counts.append(_sample(httpx.get(f"{url}/metrics").text, "striate_requests_total", model="tiny"))
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    assert counts == [3, 1]
