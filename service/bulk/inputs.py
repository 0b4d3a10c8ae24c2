"""What to embed: a table of (id, path), from a folder of images or a Parquet table of paths/URIs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from striate.errors import StriateError
from striate.preprocess import find_images

ID, PATH = "id", "path"
INPUT_SCHEMA = pa.schema([(ID, pa.string()), (PATH, pa.string())])


def from_folder(root: str | Path) -> pa.Table:
    """Every image file under `root` (hidden entries skipped), sorted; the id is its relative path."""
    root, paths = find_images(root)
    ids = [p.relative_to(root).as_posix() for p in paths]
    return pa.table({ID: ids, PATH: [str(p) for p in paths]}, schema=INPUT_SCHEMA)


def from_table(path: str | Path) -> pa.Table:
    """A Parquet table with a `path` column (local paths or URIs pyarrow can open: file://, s3://,
    gs://, hdfs://...) and an optional `id` column (default: the path). Ids must be unique."""
    path = Path(path).expanduser()
    if not path.exists():
        raise StriateError(f"paths table not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise StriateError(f"cannot read {path} as Parquet: {exc}") from None
    if PATH not in table.column_names:
        raise StriateError(f"{path} has no {PATH!r} column (it has {table.column_names})")
    paths = table.column(PATH).cast(pa.string())
    ids = table.column(ID).cast(pa.string()) if ID in table.column_names else paths
    if paths.null_count or ids.null_count:
        raise StriateError(f"{path}: the {PATH!r} and {ID!r} columns must not hold nulls")
    out = pa.table({ID: ids, PATH: paths}, schema=INPUT_SCHEMA)
    if len(set(out.column(ID).to_pylist())) != out.num_rows:
        raise StriateError(f"{path}: ids must be unique (give an {ID!r} column when paths repeat)")
    return out
