"""Provider selection (device cpu / auto / cuda) and the I/O-binding run path, on a real session.

This machine's onnxruntime may have no CUDA provider; each test states what must hold either way.
The I/O-binding path (what CUDA uses) runs here on the CPU provider, which onnxruntime supports."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
from service_fixtures import DEFAULT_BUNDLE, make_settings

from service.runtime import Graph, providers_for
from striate.errors import StriateError

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
MODEL = DEFAULT_BUNDLE / "model.onnx"


def test_cpu_is_cpu_only_and_auto_prefers_cuda_when_present():
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    expected = ["CUDAExecutionProvider", "CPUExecutionProvider"] if HAS_CUDA else ["CPUExecutionProvider"]
    assert providers_for("auto") == expected


def test_cuda_without_a_cuda_provider_is_refused_with_what_to_do():
    if HAS_CUDA:
        assert providers_for("cuda")[0] == "CUDAExecutionProvider"
        return
    with pytest.raises(StriateError, match="onnxruntime-gpu") as info:
        providers_for("cuda")
    assert "STRIATE_DEVICE=cpu" in str(info.value)


def test_io_binding_is_the_cuda_path_and_off_on_the_cpu_by_default(tmp_path):
    graph = Graph(MODEL, make_settings(tmp_path, device="auto", intra_op_threads=1))
    assert (graph.bound is not None) == (graph.provider == "CUDAExecutionProvider")
    cpu = Graph(MODEL, make_settings(tmp_path, device="cpu", intra_op_threads=1))
    assert cpu.provider == "CPUExecutionProvider" and cpu.bound is None


def test_bound_runs_match_plain_runs_across_shapes_threads_and_reuse(tmp_path):
    settings = make_settings(tmp_path, device="cpu", intra_op_threads=1)
    plain, bound = Graph(MODEL, settings), Graph(MODEL, settings, io_binding=True)
    assert bound.bound is not None and bound.bound.device == "cpu"
    rng = np.random.default_rng(0)
    names = list(plain.outputs)
    failures: list[str] = []

    def worker(seed: int) -> None:
        local = np.random.default_rng(seed)
        for batch in (1, 4, 1, 7, 4):  # shapes change, then repeat (buffers reused)
            x = local.standard_normal((batch, 1, 32, 32)).astype(np.float32)
            wanted = names if batch != 4 else names[:2]
            got, ref = bound.run({"image": x}, wanted), plain.run({"image": x}, wanted)
            for name in wanted:
                if got[name].shape != ref[name].shape or not np.allclose(got[name], ref[name], atol=1e-6):
                    failures.append(f"seed {seed} batch {batch} {name}")

    threads = [threading.Thread(target=worker, args=(int(s),)) for s in rng.integers(0, 1000, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    buffers = []
    for _ in range(2):  # the second call refills the first call's buffer, and answers its own input
        x = rng.standard_normal((4, 1, 32, 32)).astype(np.float32)
        assert np.allclose(bound.run({"image": x}, ["logits"])["logits"], plain.run({"image": x}, ["logits"])["logits"])
        buffers.append(list(bound.bound._state().inputs.values()))
    assert len(buffers[1]) == 1 and buffers[1][0] is buffers[0][0]
    # results own their memory: a later run does not change an earlier answer
    x = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
    first = bound.run({"image": x}, ["logits"])["logits"]
    kept = first.copy()
    bound.run({"image": x * 3}, ["logits"])
    assert np.array_equal(first, kept)
