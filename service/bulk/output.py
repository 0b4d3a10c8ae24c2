"""The output: a Parquet dataset (a folder of part files), readable as one table by pyarrow,
pandas, Spark or Ray. Resuming means skipping the ids that some part file already holds."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from striate.errors import StriateError

from .inputs import ID

PART_GLOB = "*.parquet"


def prepare(out: str | Path, schema: pa.Schema, resume: bool) -> set[str]:
    """Create the dataset folder, or check the one there; return the ids already written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StriateError(f"--out {out} exists and is a file; the output is a folder of Parquet parts")
    parts = sorted(out.glob(PART_GLOB)) if out.is_dir() else []
    if parts and not resume:
        raise StriateError(f"{out} already holds {len(parts)} part file(s); pass --resume to add to it")
    out.mkdir(parents=True, exist_ok=True)
    if not parts:
        return set()
    found = pq.read_schema(parts[0])
    if not found.equals(schema):
        raise StriateError(
            f"{out} was written with other columns ({', '.join(found.names)}); resume with the same bundle, "
            "layers and top-k, or write to a new folder"
        )
    return set(pads.dataset(out, format="parquet").to_table(columns=[ID]).column(ID).to_pylist())


def write_part(out: str | Path, table: pa.Table) -> Path:
    """One new part file, written whole under a temporary name and renamed: a killed job leaves no
    half-written part behind, so resuming never reads a torn file."""
    name = f"part-{uuid.uuid4().hex}.parquet"
    tmp = Path(out) / f".{name}.tmp"
    pq.write_table(table, tmp)
    return tmp.rename(Path(out) / name)


def read(out: str | Path) -> pa.Table:
    """The whole dataset as one table, sorted by id."""
    return pads.dataset(Path(out), format="parquet").to_table().sort_by(ID)
