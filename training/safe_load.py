"""Reading PyTorch files without unpickling: `torch.load(weights_only=True)` with plain reasons.

PyTorch's own message for a file holding pickled objects suggests reloading it with
`weights_only=False`, which would run whatever code the file carries. Striate never does that, so
callers word their one-line error from `UnreadableFile.reason` instead.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any

import torch

from striate.errors import StriateError

ZIP_MAGIC = b"PK"  # torch.save's format since PyTorch 1.6
PICKLE_PROTO = b"\x80"  # the PROTO opcode that starts a pickle (legacy torch.save, pickle.dump)


class UnreadableFile(StriateError):
    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.reason = reason


def read_plain(path: str | os.PathLike) -> Any:
    """The plain data (tensors, dicts, lists, numbers, strings) in the PyTorch file at `path`."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    if not head.startswith((ZIP_MAGIC, PICKLE_PROTO)):
        raise UnreadableFile(path, "not a PyTorch file (neither a zip archive nor a pickle)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the weights-only unpickler's pickle-protocol warning
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            reason = "it holds pickled Python objects, which Striate never loads (unpickling can run code)"
        except Exception:  # truncated, corrupt
            reason = "a truncated or corrupt PyTorch file"
    raise UnreadableFile(path, reason)
