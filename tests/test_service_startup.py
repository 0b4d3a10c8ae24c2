"""Start-up as users run it: no torch imported, `striate serve`, `uvicorn service.app:app`, settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from service_fixtures import REPO, free_port

from service.settings import Settings

PYTHON = sys.executable

# Serves `service.app:app` (configured from the environment) in a thread, makes real requests, and
# reports what got imported. Runs in a fresh interpreter: the test process itself has torch loaded.
NO_TORCH_SCRIPT = """
import json, sys, threading, time, urllib.request
import uvicorn
from service.app import app
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
while not server.started:
    time.sleep(0.02)
base = f"http://127.0.0.1:{sys.argv[1]}"
png = open(sys.argv[2], "rb").read()
codes = []
for path in ("/v1/models/tiny/classify", "/v1/models/tiny/explain?format=overlay", "/v1/models/tiny/features"):
    req = urllib.request.Request(base + path, data=png, headers={"content-type": "image/png"})
    codes.append(urllib.request.urlopen(req).status)
models = json.load(urllib.request.urlopen(base + "/v1/models"))
server.should_exit = True
thread.join()
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "training"))
print(json.dumps({"codes": codes, "forbidden": bad, "models": [m["name"] for m in models["models"]]}))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIATE_")}
    return env | {"PYTHONPATH": str(REPO)} | extra


def test_service_never_imports_torch(model_dir, tmp_path):
    from service_fixtures import digits_png_bytes

    png = tmp_path / "digit.png"
    png.write_bytes(digits_png_bytes(0))
    out = subprocess.run(
        [PYTHON, "-c", NO_TORCH_SCRIPT, str(free_port()), str(png)],
        env=_env(STRIATE_MODEL_DIR=str(model_dir)),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["codes"] == [200, 200, 200]
    assert "tiny" in report["models"]  # STRIATE_MODEL_DIR was honoured
    assert report["forbidden"] == []


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.communicate()[1][-3000:]}")
        try:
            return httpx.get(url + "/readyz")
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not answer")


def test_striate_serve_cli(model_dir):
    port = free_port()
    cmd = [
        PYTHON,
        "-m",
        "striate.cli",
        "serve",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--log-level",
        "info",
    ]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = _wait_ready(f"http://127.0.0.1:{port}", proc)
        assert ready.status_code == 200 and "tiny" in ready.json()["models"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"loaded tiny/2 from {model_dir / 'tiny' / '2'} on CPUExecutionProvider" in err  # the provider is logged
    assert f"bundle {model_dir / 'broken' / '1'} failed to load: invalid manifest" in err


def test_striate_serve_from_the_environment_with_device_auto(model_dir):
    """Host, port, model dir, device and log level from STRIATE_* alone; `auto` without CUDA runs on the CPU."""
    import onnxruntime

    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    expected = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    port = free_port()
    env = _env(
        STRIATE_HOST="127.0.0.2",  # another loopback address: the server must bind where it is told
        STRIATE_PORT=str(port),
        STRIATE_MODEL_DIR=str(model_dir),
        STRIATE_DEVICE="auto",
        STRIATE_LOG_LEVEL="info",
    )
    cmd = [PYTHON, "-m", "striate.cli", "serve"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_ready(f"http://127.0.0.2:{port}", proc).status_code == 200
        tiny = httpx.get(f"http://127.0.0.2:{port}/v1/models/tiny").json()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert tiny["provider"] == expected
    assert f"loaded tiny/2 from {model_dir / 'tiny' / '2'} on {expected}" in err  # info lines: the level was read


def test_log_level_from_the_environment_quiets_the_server(model_dir):
    port = free_port()
    env = _env(STRIATE_PORT=str(port), STRIATE_MODEL_DIR=str(model_dir), STRIATE_LOG_LEVEL="warning")
    cmd = [PYTHON, "-m", "striate.cli", "serve"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_ready(f"http://127.0.0.1:{port}", proc).status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "loaded tiny" not in err  # an info line
    assert "broken/1 failed to load" in err  # an error line still shows


def test_cuda_without_a_cuda_provider_is_a_clear_error(model_dir):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    out = subprocess.run(
        [PYTHON, "-m", "striate.cli", "serve", "--model-dir", str(model_dir), "--device", "cuda"],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "no CUDA provider" in out.stderr and "Traceback" not in out.stderr


def test_missing_model_dir_is_a_clear_error(tmp_path):
    out = subprocess.run(
        [PYTHON, "-m", "striate.cli", "serve", "--model-dir", str(tmp_path / "nowhere")],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_settings_defaults_and_environment(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("STRIATE_"):
            monkeypatch.delenv(key)
    assert Settings().model_dir == REPO / "exported"  # found beside the package, whatever the cwd
    monkeypatch.setenv("STRIATE_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("STRIATE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("STRIATE_DEVICE", "auto")
    s = Settings()
    assert s.model_dir == Path(tmp_path) and s.max_batch_size == 7 and s.device == "auto"


def test_no_models_is_live_but_not_ready(tmp_path):
    from service_fixtures import make_settings, run_server

    with run_server(make_settings(tmp_path)) as url:
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.get(url + "/v2/health/live").status_code == 200
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert httpx.get(url + "/v2/health/ready").status_code == 503
        assert httpx.get(url + "/v1/models").json() == {"models": [], "broken": []}


def test_broken_bundles_are_reported_and_do_not_stop_the_others(model_dir, tmp_path):
    import shutil

    from service_fixtures import make_settings

    from service.metrics import Metrics
    from service.repository import Repository

    root = tmp_path / "repo"
    shutil.copytree(model_dir / "tiny" / "1", root / "good" / "1")
    shutil.copytree(model_dir / "tiny" / "1", root / "misplaced" / "1")  # manifest says tiny/1
    shutil.copytree(model_dir / "tiny" / "1", root / "nograph" / "1")
    (root / "nograph" / "1" / "model.onnx").unlink()
    shutil.copytree(model_dir / "tiny" / "1", root / "garbled" / "1")
    (root / "garbled" / "1" / "model.onnx").write_bytes(b"not onnx")
    shutil.copytree(model_dir / "tinyrgb" / "1", root / "swapped" / "1")
    shutil.copy(model_dir / "tiny" / "1" / "model.onnx", root / "swapped" / "1" / "model.onnx")  # 1 vs 3 channels
    (root / "good" / "latest").mkdir()
    for bundle in ("good", "nograph", "garbled", "swapped"):
        manifest = root / bundle / "1" / "manifest.json"
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"name": bundle}))
    repo = Repository(make_settings(root), Metrics())
    repo.load()
    assert sorted(repo.models) == ["good"]
    errors = {(b.name, b.version): b.error for b in repo.broken}
    assert "bundle sits at misplaced/1" in errors[("misplaced", "1")]
    assert errors[("nograph", "1")].startswith("NoSuchFile:") and "File doesn't exist" in errors[("nograph", "1")]
    assert errors[("garbled", "1")].startswith("InvalidProtobuf:")
    assert "disagrees with the manifest" in errors[("swapped", "1")]
    assert "positive integers" in errors[("good", "latest")]
