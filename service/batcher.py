"""Dynamic batching: concurrent requests for one graph merged into one onnxruntime call.

Requests `announce()` themselves when they start decoding, then `submit()` their tensors; or they
`submit_encoded()` at once with a `prepare` function that decodes them, which the worker thread calls
for the whole batch just before the run (one thread hop per batch, not one per request). The
collector takes the oldest job and keeps adding queued jobs up to `max_batch` images; it waits for
more (at most `max_delay`) only while announced requests are still on their way, so a lone request
runs at once and a burst is merged. One call per graph runs at a time, in a worker thread, while
the next batch gathers. The queue is bounded in images: a full queue is a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service.errors import Overloaded

log = logging.getLogger("striate.service")

# Runs whose recent average is under this many seconds happen on the event loop, not in a thread:
# the hop to a thread and back costs ~0.1 ms, and blocking the loop for 2 ms at most delays nothing
# that matters. Measured (bench/service_bench.py's setup, digits, one core, interleaved A/B against
# 0.5 ms): concurrency 1 +10-12% req/s and -0.13 ms CPU per request; concurrency 16 +1-2% (its
# batches of ~8 images take ~5 ms, so they still run in the thread).
INLINE_RUN_S = 0.002

RunFn = Callable[[dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]
PrepareFn = Callable[[], dict[str, np.ndarray]]  # builds a job's feeds (decode + preprocess), in the worker
ObserveFn = Callable[[int, float], None]  # (batch images, seconds)


@dataclass
class Ticket:
    done: bool = False


@dataclass
class _Job:
    feeds: dict[str, np.ndarray] | None
    outputs: tuple[str, ...]
    size: int
    future: asyncio.Future = field(repr=False)
    key: tuple = ()  # feeds' names and per-item shapes: only jobs with equal keys are concatenated
    prepare: PrepareFn | None = field(default=None, repr=False)  # set: `feeds` is built in the worker
    error: Exception | None = field(default=None, repr=False)  # what `prepare` raised


class Batcher:
    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        observe: ObserveFn | None = None,
        queue_gauge: Callable[[int], None] | None = None,
    ) -> None:
        self._run, self._executor = run, executor
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_s, max_queue
        self._observe, self._queue_gauge = observe, queue_gauge
        self._jobs: deque[_Job] = deque()
        self._running: list[_Job] = []  # the batch in onnxruntime now
        self._queued = 0  # images waiting
        self._incoming = 0  # announced requests not yet submitted
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self.recent_run_s = 1.0  # moving average of run time (the repository seeds it at warm-up)

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def idle(self) -> bool:
        """Nothing running, queued or announced: a request now would run alone, at once."""
        return not self._running and not self._jobs and self._incoming <= 0

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._closed = True
        for job in [*self._running, *self._jobs]:
            if not job.future.done():
                job.future.set_exception(Overloaded("the server is shutting down"))
        self._jobs.clear()
        self._running = []

    @contextlib.contextmanager
    def announce(self) -> Iterator[Ticket]:
        """Mark a request that will `submit` soon (while it decodes), so the collector may wait for it.

        Pass the ticket to `submit`; leaving the block without submitting withdraws the announcement.
        """
        ticket = Ticket()
        self._incoming += 1
        try:
            yield ticket
        finally:
            self._withdraw(ticket)

    def _withdraw(self, ticket: Ticket | None) -> None:
        if ticket is not None and not ticket.done:
            ticket.done = True
            self._incoming -= 1
            self._notify()

    async def submit(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | tuple[str, ...], ticket: Ticket | None = None
    ) -> dict[str, np.ndarray]:
        """Queue tensors with a leading batch axis; returns this request's slice of each output."""
        self._withdraw(ticket)
        key = tuple((name, array.shape[1:]) for name, array in feeds.items())
        return await self._enqueue(feeds, None, len(next(iter(feeds.values()))), key, outputs)

    async def submit_encoded(
        self, prepare: PrepareFn, size: int, key: tuple, outputs: list[str] | tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        """Queue `size` items whose feeds `prepare()` builds in the worker thread, batched with the run.

        `key` is what `submit` derives from the feeds: ((name, per-item shape), ...). An exception
        from `prepare` fails this request only."""
        return await self._enqueue(None, prepare, size, key, outputs)

    async def _enqueue(self, feeds, prepare, size: int, key: tuple, outputs) -> dict[str, np.ndarray]:
        if self._task is None:
            raise RuntimeError("batcher not started")
        if self._closed:  # a version unloaded while this request held it past the drain grace
            raise Overloaded("this model version was unloaded; retry", headers={"Retry-After": "1"})
        if self._queued and self._queued + size > self.max_queue:
            raise Overloaded(
                f"the queue is full ({self._queued} images waiting, limit {self.max_queue}); retry shortly",
                headers={"Retry-After": "1"},
            )
        job = _Job(feeds, tuple(outputs), size, asyncio.get_running_loop().create_future(), key, prepare)
        self._jobs.append(job)
        self._queued += size
        self._set_gauge()
        self._notify()
        return await job.future

    def _notify(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _set_gauge(self) -> None:
        if self._queue_gauge is not None:
            self._queue_gauge(self._queued)

    async def _next_batch(self) -> list[_Job]:
        assert self._wakeup is not None
        while not self._jobs:
            self._wakeup.clear()
            await self._wakeup.wait()
        loop = asyncio.get_running_loop()
        batch = [self._jobs.popleft()]
        size = batch[0].size
        deadline = loop.time() + self.max_delay_s
        while size < self.max_batch:
            if self._jobs:
                if size + self._jobs[0].size > self.max_batch or self._jobs[0].key != batch[0].key:
                    break
                job = self._jobs.popleft()
                batch.append(job)
                size += job.size
                continue
            remaining = deadline - loop.time()
            if self._incoming <= 0 or remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        self._queued -= size
        self._set_gauge()
        return [job for job in batch if not job.future.done()]  # drop cancelled requests

    def _prepare_and_run(self, batch: list[_Job], outputs: list[str]) -> tuple[list[_Job], dict, float]:
        """In the worker: build the feeds of jobs that came encoded (failures fail their job only),
        then one onnxruntime call for the jobs that have feeds. Returns (jobs run, results, run seconds)."""
        for job in batch:
            if job.prepare is not None:
                try:
                    job.feeds = job.prepare()
                except Exception as exc:  # the client's image: its own request gets the error
                    job.feeds, job.error = None, exc
        ready = [job for job in batch if job.feeds is not None]
        if not ready:
            return ready, {}, 0.0
        if len(ready) == 1:
            feeds = ready[0].feeds
        else:
            feeds = {k: np.concatenate([job.feeds[k] for job in ready]) for k in ready[0].feeds}
        start = time.perf_counter()
        results = self._run(feeds, outputs)
        return ready, results, time.perf_counter() - start

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._running = []
            batch = self._running = await self._next_batch()
            if not batch:
                continue
            outputs = list(dict.fromkeys(name for job in batch for name in job.outputs))
            try:
                if self.recent_run_s < INLINE_RUN_S:  # tiny model: a thread hop costs more than the run
                    ready, results, took = self._prepare_and_run(batch, outputs)
                else:
                    ready, results, took = await loop.run_in_executor(
                        self._executor, self._prepare_and_run, batch, outputs
                    )
            except Exception as exc:  # a failed run fails its requests, never the collector
                log.exception("inference failed for a batch of %d requests", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(job.error or exc)
                continue
            for job in batch:
                if job.error is not None and not job.future.done():
                    job.future.set_exception(job.error)
            if not ready:
                continue
            self.recent_run_s = 0.8 * self.recent_run_s + 0.2 * took
            if self._observe is not None:
                self._observe(sum(job.size for job in ready), took)
            offset = 0
            for job in ready:
                if not job.future.done():
                    end = offset + job.size
                    job.future.set_result({name: results[name][offset:end] for name in job.outputs})
                offset += job.size
