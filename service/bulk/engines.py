"""Run the embedder over a table of inputs: in this process (`local`) or as a Ray Data actor pool.

Both engines hand the same `EmbedAndWrite` the same rows: it embeds a block of rows in chunks of
`batch_size` and writes them as one Parquet part. With Ray each actor (1 CPU, onnxruntime on one
thread, its session loaded once) writes its own parts, so nothing but a one-row summary per block
flows back to the driver and a job of any size streams; the output folder must be one that every
node can write (local disk on one machine, a shared or object-store mount on a cluster).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from .embedder import ERROR, BundleEmbedder, EmbedOptions
from .inputs import ID

SUMMARY_ROWS, SUMMARY_ERRORS = "rows", "errors"


@dataclass(frozen=True)
class JobOptions:
    out: str
    batch_size: int = 32  # images per onnxruntime call
    rows_per_part: int = 1024  # rows per Parquet part (and per Ray block)
    progress: bool = True


class EmbedAndWrite:
    """Embed a block of (id, path) rows chunk by chunk, write it as one part, return a summary row."""

    def __init__(self, options: EmbedOptions, job: JobOptions) -> None:
        self.embedder = BundleEmbedder(options)
        self.job = job

    def __call__(self, block: pa.Table) -> pa.Table:
        from .output import write_part

        step = self.job.batch_size
        chunks = [self.embedder(block.slice(i, step)) for i in range(0, block.num_rows, step)]
        table = pa.concat_tables(chunks) if chunks else self.embedder.schema.empty_table()
        if table.num_rows:
            write_part(self.job.out, table)
        errors = table.num_rows - table.column(ERROR).null_count
        return pa.table({SUMMARY_ROWS: [table.num_rows], SUMMARY_ERRORS: [errors]})


@dataclass
class Summary:
    rows: int = 0
    errors: int = 0
    skipped: int = 0  # already in the output (resume)


def _pending(inputs: pa.Table, done: set[str]) -> pa.Table:
    if not done:
        return inputs
    keep = pc.invert(pc.is_in(inputs.column(ID), value_set=pa.array(sorted(done), pa.string())))
    return inputs.filter(keep)


def run_local(inputs: pa.Table, options: EmbedOptions, job: JobOptions, done: set[str]) -> Summary:
    """One process, one session using every core (unless `options.threads` says otherwise)."""
    from tqdm import tqdm

    todo = _pending(inputs, done)
    worker = EmbedAndWrite(options, job)
    summary = Summary(skipped=inputs.num_rows - todo.num_rows)
    with tqdm(total=todo.num_rows, unit="img", desc="embedding", disable=not job.progress) as bar:
        for start in range(0, todo.num_rows, job.rows_per_part):
            result = worker(todo.slice(start, job.rows_per_part))
            summary.rows += result.column(SUMMARY_ROWS)[0].as_py()
            summary.errors += result.column(SUMMARY_ERRORS)[0].as_py()
            bar.update(result.column(SUMMARY_ROWS)[0].as_py())
    return summary


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_ray(
    inputs: pa.Table, options: EmbedOptions, job: JobOptions, done: set[str], address: str | None = None
) -> Summary:
    """A Ray Data actor pool sized to the cluster's CPUs, one single-threaded session per actor.

    `address`: an existing cluster ("auto", "ray://host:10001"); None starts a local Ray on this
    machine's cores (or joins the one `RAY_ADDRESS` names).
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    todo = _pending(inputs, done)
    summary = Summary(skipped=inputs.num_rows - todo.num_rows)
    if todo.num_rows == 0:
        return summary
    # One block per part, made here: no Ray task has to split the table, since every CPU goes to the
    # actors (a split task would wait for a CPU that the pool holds).
    blocks = [todo.slice(i, job.rows_per_part) for i in range(0, todo.num_rows, job.rows_per_part)]
    actors = min(cluster_cpus(), len(blocks))
    ray.data.DataContext.get_current().enable_progress_bars = job.progress
    ds = ray.data.from_arrow(blocks)
    results = ds.map_batches(
        EmbedAndWrite,
        fn_constructor_args=(replace(options, threads=1), job),
        batch_size=job.rows_per_part,
        batch_format="pyarrow",
        concurrency=actors,
        num_cpus=1,
    )
    for batch in results.iter_batches(batch_format="pyarrow", batch_size=None):
        summary.rows += pc.sum(batch.column(SUMMARY_ROWS)).as_py() or 0
        summary.errors += pc.sum(batch.column(SUMMARY_ERRORS)).as_py() or 0
    return summary


ENGINES = {"local": run_local, "ray": run_ray}


def embed_images(
    inputs: pa.Table, options: EmbedOptions, job: JobOptions, engine: str = "local", resume: bool = False, **engine_args
) -> Summary:
    """Check the bundle and the output folder, then embed every input not already written."""
    from striate.manifest import Manifest

    from .embedder import check_options, output_schema
    from .output import prepare

    manifest = Manifest.load(options.bundle)
    check_options(manifest, options)
    done = prepare(job.out, output_schema(manifest, options), resume)
    return ENGINES[engine](inputs, options, job, done, **engine_args)
