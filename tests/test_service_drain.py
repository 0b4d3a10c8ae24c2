"""Graceful drain: SIGTERM to `striate serve` with many large requests in flight, over many rounds.

Each round starts the real CLI server, fires concurrent clients carrying 128-image bodies, sends
SIGTERM at a random moment while they are under way, and checks: every request the server took is
answered 200 in full (a client may only be refused at connect, once the listener is closed), a
keep-alive prober sees readiness turn 503, and the process exits 0.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from service_fixtures import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("STRIATE_DRAIN_ROUNDS", "8"))
CLIENTS, IMAGES = 16, 128


def _png(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _start(model_dir, port: int) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": REPO, "STRIATE_DRAIN_GRACE": "60", "STRIATE_DEVICE": "cpu"}
    env |= {"STRIATE_MAX_QUEUE": str(CLIENTS * IMAGES)}  # the whole burst fits: no 503 for a full queue
    cmd = [sys.executable, "-m", "striate.cli", "serve", "--model-dir", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited at start-up: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server never became ready")


@pytest.fixture(scope="module")
def small_repo(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("drain")
    shutil.copytree(model_dir / "tiny", root / "tiny")
    return root


def _round(repo, round_: int, body: bytes, content_type: str) -> tuple[list, list, int, str]:
    """One server, one burst, one SIGTERM: (client outcomes, readiness seen, exit code, stderr)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start(repo, port)
    outcomes: list[object] = []
    ready_seen: list[int] = []
    started = threading.Barrier(CLIENTS + 2)
    stop = threading.Event()
    clients = [httpx.Client(base_url=url, timeout=120) for _ in range(CLIENTS)]

    def post(c: httpx.Client) -> httpx.Response:
        headers = {"content-type": content_type, "connection": "close"}  # a new connection each
        return c.post("/v1/models/tiny/classify?top_k=1", content=body, headers=headers)

    def client(c: httpx.Client) -> None:
        started.wait()
        try:
            r = post(c)
            ok = r.status_code == 200 and len(r.json()["results"]) == IMAGES
            outcomes.append(200 if ok else f"{r.status_code}: {r.text[:300]}")
        except httpx.ConnectError:
            outcomes.append("refused")  # came after the listener closed: allowed
        except Exception as exc:  # taken, then dropped (or a wrong answer): the defect
            outcomes.append(f"{type(exc).__name__}: {exc}")

    def prober() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            ready_seen.append(c.get("/readyz").status_code)  # connected before the signal
            started.wait()
            try:
                while not stop.is_set():
                    ready_seen.append(c.get("/readyz").status_code)
            except httpx.HTTPError:
                pass  # closed after its 503 (Connection: close); a new connection is refused

    try:
        # How long the whole burst takes here and now, so that the signal lands while it is under way.
        begin = time.monotonic()
        calibration = [threading.Thread(target=post, args=(c,)) for c in clients]
        for t in calibration:
            t.start()
        for t in calibration:
            t.join()
        burst_s = time.monotonic() - begin

        threads = [threading.Thread(target=client, args=(c,)) for c in clients]
        probe = threading.Thread(target=prober)
        for t in (*threads, probe):
            t.start()
        started.wait()
        time.sleep(random.Random(round_).uniform(0.1, 0.7) * burst_s)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=180)
        stop.set()
        probe.join(timeout=60)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        for c in clients:
            c.close()
    return outcomes, ready_seen, code, proc.stderr.read()


@pytest.mark.slow
def test_sigterm_answers_every_request_received_then_exits_0(small_repo):
    rng = np.random.default_rng(0)
    files = [("files", (f"{i}.png", _png(rng), "image/png")) for i in range(IMAGES)]
    encoded = httpx.Request("POST", "http://x/", files=files)  # one multipart body (~1.7 MB), sent by all
    body, content_type = encoded.read(), encoded.headers["content-type"]
    answered = refused = drained_probes = 0
    for round_ in range(ROUNDS):
        outcomes, ready_seen, code, err = _round(small_repo, round_, body, content_type)
        bad = [o for o in outcomes if o not in (200, "refused")]
        assert not bad and len(outcomes) == CLIENTS, (round_, bad, err[-3000:])
        assert code == 0, (round_, code, err[-3000:])
        if 503 in ready_seen:  # never ready again once it said no
            assert set(ready_seen[ready_seen.index(503) :]) == {503}, (round_, ready_seen[-5:])
            drained_probes += 1
        answered += outcomes.count(200)
        refused += outcomes.count("refused")
    assert answered >= ROUNDS, (answered, refused)  # the signal did come with requests in flight
    # The prober sees the 503 unless its own request was under way at the signal (then its connection
    # closes after that answer): in most rounds, not all.
    assert drained_probes >= 1, drained_probes


def test_draining_turns_readiness_503_and_closes_connections(model_dir):
    """What SIGTERM flips first (service/server.py sets it in the signal handler), seen on an open
    keep-alive connection: readiness says no, with `Connection: close`; the models still answer."""
    import uvicorn
    from service_fixtures import digits_png_bytes, make_settings

    from service.app import create_app

    app = create_app(make_settings(model_dir))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            assert c.get("/readyz").status_code == 200
            app.state.draining = True
            r = c.post("/v1/models/tiny/classify", content=digits_png_bytes(0), headers={"content-type": "image/png"})
            assert r.status_code == 200
            for path in ("/readyz", "/v2/health/ready"):
                r = c.get(path)
                assert r.status_code == 503 and r.headers["connection"] == "close", (path, r.headers)
                assert "shutting down" in str(r.json()["error"])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
