"""bench/gpu_bench.py: without CUDA it says so and exits 2; its whole path runs on the CPU provider."""

from __future__ import annotations

import json
import subprocess
import sys

import onnxruntime as ort
import pytest
from service_fixtures import DEFAULT_BUNDLE, REPO

SCRIPT = REPO / "bench" / "gpu_bench.py"


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_without_cuda_it_says_what_to_install_and_exits_2():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2
    assert "no CUDA here" in out.stderr and "onnxruntime-gpu" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_the_whole_benchmark_runs_on_the_cpu_provider_and_checks_its_outputs(tmp_path):
    result = tmp_path / "gpu.json"
    cmd = [sys.executable, str(SCRIPT), "--cpu-dry-run", "--seconds", "0.01", "--bundle", str(DEFAULT_BUNDLE)]
    out = subprocess.run([*cmd, "--out", str(result)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(result.read_text())[DEFAULT_BUNDLE.parent.name]
    assert [row["batch"] for row in doc["rows"]] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert set(doc["rows"][0]) == {"batch", "raw", "striate", "striate_fp16"}
    assert doc["check"]["striate"]["max_abs_diff_logits"] == 0.0  # same graph, same provider
    assert doc["check"]["striate_fp16"]["top1_agreement"] >= 0.9
