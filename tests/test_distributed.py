"""DDP on CPU: two gloo processes on loopback end with identical weights; one process needs no setup.

`striate train` under torchrun is checked the same way: every rank's final weights are compared.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
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
    err = open(Path(out_dir) / f"rank{rank}.stderr", "w")  # noqa: SIM115 (lives as long as the process)
    os.dup2(err.fileno(), 2)  # what the C++ runtime prints on abort lands here, for the parent to read
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
    mean_rank = D.all_reduce_mean(3.0 * (rank + 1), info)  # 3 on rank 0, 6 on rank 1: the mean is 4.5 on both
    D.broadcast_buffers(model, info)  # BN running stats are local until synchronised
    D.barrier()
    state = {k: v.detach().clone() for k, v in D.unwrap_model(model).state_dict().items()}
    torch.save(
        {"state": state, "seen": seen, "mean_seen": mean_seen, "mean_rank": mean_rank}, Path(out_dir) / f"rank{rank}.pt"
    )
    D.finish(info)
    del model, opt
    D.cleanup()


# The one failure forgiven: torch's gloo / TCPStore teardown on rank 0 aborted once in CI, after the
# run was complete (not reproduced in 115 local runs). Its exact signature:
TEARDOWN_ABORT = ("SIGABRT", "terminate called without an active exception")


def _spawn_two_ranks(out: Path) -> Path:
    """Run `_worker` on two ranks; the folder where both wrote their results.

    A rank that dies of the documented teardown abort (SIGABRT with the C++ runtime's
    "terminate called without an active exception") *after both ranks wrote their results* is
    forgiven with a warning; every other failure fails the test.
    """
    try:
        mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    except mp.ProcessExitedException as exc:
        if not _is_teardown_abort(exc, out):
            raise
        warnings.warn(
            f"rank {exc.error_index} aborted in process-group teardown after writing its results", stacklevel=2
        )
    return out


def _is_teardown_abort(exc: mp.ProcessExitedException, out: Path) -> bool:
    wrote_all = all((out / f"rank{r}.pt").exists() for r in range(2))
    stderr = (out / f"rank{exc.error_index}.stderr").read_text(errors="replace")
    signal_name, message = TEARDOWN_ABORT
    return wrote_all and exc.signal_name == signal_name and message in stderr


def _exited(rank: int, signal_name: str | None) -> mp.ProcessExitedException:
    code = -6 if signal_name == "SIGABRT" else (-11 if signal_name else 1)
    return mp.ProcessExitedException("died", rank, 1234, code, signal_name)


def test_only_the_documented_teardown_abort_is_forgiven(tmp_path: Path) -> None:
    for r in range(2):
        (tmp_path / f"rank{r}.pt").write_bytes(b"results")
        (tmp_path / f"rank{r}.stderr").write_text("")
    (tmp_path / "rank0.stderr").write_text("terminate called without an active exception\n")
    assert _is_teardown_abort(_exited(0, "SIGABRT"), tmp_path)
    assert not _is_teardown_abort(_exited(0, "SIGSEGV"), tmp_path)  # another signal
    assert not _is_teardown_abort(_exited(0, None), tmp_path)  # an exit code, no signal
    assert not _is_teardown_abort(_exited(1, "SIGABRT"), tmp_path)  # an abort without that message
    (tmp_path / "rank1.pt").unlink()
    assert not _is_teardown_abort(_exited(0, "SIGABRT"), tmp_path)  # before every rank wrote its results


def test_two_cpu_processes_end_with_identical_weights(tmp_path: Path) -> None:
    out = _spawn_two_ranks(tmp_path)
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    # Each rank saw its own half of the data (256 samples / 2 ranks x 2 epochs).
    assert r0["seen"] == r1["seen"] == 256
    assert r0["mean_seen"] == r1["mean_seen"] == 256.0
    assert r0["mean_rank"] == r1["mean_rank"] == 4.5  # values that differ per rank, averaged
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


# Run under torchrun: records the weights every rank's DDP module ends with, then exits as `striate` did.
RECORD_RANK_WEIGHTS = """
import os, sys, torch
from torch.nn.parallel import DistributedDataParallel
wrapped = []
_init = DistributedDataParallel.__init__
def _record(self, module, *args, **kwargs):
    wrapped.append(module)
    _init(self, module, *args, **kwargs)
DistributedDataParallel.__init__ = _record
from striate.cli import main
code = main(sys.argv[2:])
state = {k: v.detach().cpu() for k, v in wrapped[-1].named_parameters()} if wrapped else {}
torch.save(state, os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
sys.exit(code)
"""


@pytest.mark.slow
def test_striate_train_under_torchrun_ends_with_equal_weights_on_every_rank(tmp_path: Path, repo_root: Path) -> None:
    """`torchrun --nproc_per_node=2 ... striate train`: both ranks hold the same weights, rank 0 wrote them."""
    from training.checkpoint import load_checkpoint

    script, weights, run = tmp_path / "record.py", tmp_path / "weights", tmp_path / "run"
    script.write_text(RECORD_RANK_WEIGHTS)
    weights.mkdir()
    train = ["train", "--arch", "lenet5", "--data", "digits", "--input-size", "16", "--epochs", "2"]
    train += ["--batch-size", "32", "--device", "cpu", "--out", str(run), "--no-report", "--no-progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={_free_port()}", str(script), str(weights), *train]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 2" in proc.stderr
    r0 = torch.load(weights / "rank0.pt", weights_only=True)
    r1 = torch.load(weights / "rank1.pt", weights_only=True)
    assert r0, "rank 0 never wrapped its model in DistributedDataParallel"
    assert r0.keys() == r1.keys()
    for name, value in r0.items():
        assert torch.equal(value, r1[name]), name
    saved = load_checkpoint(run / "last.pt").build_model()
    for name, value in saved.named_parameters():
        assert torch.equal(value.detach(), r0[name]), name  # what rank 0 wrote is what the ranks hold
