"""DDP on CPU: two gloo processes on loopback end with identical weights; one process needs no setup."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from training import distributed as D


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digits() -> TensorDataset:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:256], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return TensorDataset(x, torch.tensor(y[:256]))


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # different init per rank: DDP must broadcast rank 0's
    info = D.init_distributed(device="cpu")
    assert info.world_size == world and info.rank == rank and info.is_main == (rank == 0)
    model = D.wrap_ddp(_net(), info)
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    data = _digits()
    sampler = D.make_sampler(data, info, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=32, sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen = 0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            seen += len(y)
    mean_seen = D.all_reduce_mean(seen, info)
    D.broadcast_buffers(model, info)  # BN running stats are local until synchronised
    D.barrier()
    state = {k: v.detach().clone() for k, v in D.unwrap_model(model).state_dict().items()}
    torch.save({"state": state, "seen": seen, "mean_seen": mean_seen}, Path(out_dir) / f"rank{rank}.pt")
    D.finish(info)
    del model, opt
    D.cleanup()


def _spawn_two_ranks(tmp_path: Path, attempts: int = 2) -> Path:
    """Run `_worker` on two ranks; the folder where both wrote their results.

    One known flake is forgiven, once: a rank killed by a signal *after* both ranks wrote their
    results (torch's gloo / TCPStore teardown on rank 0 aborted once in CI with "terminate called
    without an active exception"; not reproduced in 115 local runs). Any other failure fails the test.
    """
    for attempt in range(attempts):
        out = tmp_path / f"attempt{attempt}"
        out.mkdir()
        try:
            mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
            return out
        except mp.ProcessExitedException as exc:
            wrote_all = all((out / f"rank{r}.pt").exists() for r in range(2))
            if attempt + 1 == attempts or exc.signal_name is None or not wrote_all:
                raise
    raise AssertionError("unreachable")


def test_two_cpu_processes_end_with_identical_weights(tmp_path: Path) -> None:
    out = _spawn_two_ranks(tmp_path)
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    # Each rank saw its own half of the data (256 samples / 2 ranks x 2 epochs).
    assert r0["seen"] == r1["seen"] == 256
    assert r0["mean_seen"] == 256.0
    init0 = _seeded_net(100).state_dict()
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
    # Training moved the weights away from rank 0's initialisation.
    assert not torch.equal(r0["state"]["5.weight"], init0["5.weight"])


def _seeded_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _net()


def test_single_process_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = D.init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    model = _net()
    assert D.wrap_ddp(model, info) is model
    assert D.make_sampler(_digits(), info) is None
    D.barrier()
    D.cleanup()
    assert D.all_reduce_mean(3.0, info) == 3.0


@pytest.mark.slow
def test_striate_finetune_runs_unchanged_under_torchrun(tmp_path: Path, repo_root: Path) -> None:
    """`torchrun --nproc_per_node=2 -m striate.cli finetune ...`: one run directory, written by rank 0."""
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "striate.cli",
        "finetune",
        "--backbone",
        "efficientnet_lite0",
        "--data",
        "shapes",
        "--shapes-per-class",
        "12",
        "--input-size",
        "32",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-report",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "world size 2" in proc.stderr
    assert proc.stdout.count("best epoch") == 1  # only rank 0 reports
    assert {p.name for p in out.iterdir()} >= {"best.pt", "last.pt", "history.json", "metrics.json"}
