"""Dynamic batching: merging, limits, the bounded queue, failures; and merging through the server."""

from __future__ import annotations

import asyncio
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from service_fixtures import digits_png_bytes, make_settings, run_server

from service.batcher import Batcher
from service.errors import Overloaded


class Recorder:
    """A real batch function (doubles its input) that records the batch sizes it was called with."""

    def __init__(self, gate: threading.Event | None = None, fail_first: bool = False) -> None:
        self.sizes: list[int] = []
        self.gate, self.fail_first = gate, fail_first

    def __call__(self, feeds, outputs):
        if self.gate is not None:
            self.gate.wait(10)
        self.sizes.append(len(feeds["x"]))
        if self.fail_first and len(self.sizes) == 1:
            raise RuntimeError("boom")
        return {"y": feeds["x"] * 2, "n": np.full(len(feeds["x"]), len(feeds["x"]))}


def _batcher(run, max_batch=32, delay=0.5, max_queue=64) -> Batcher:
    return Batcher(run, ThreadPoolExecutor(2), max_batch, delay, max_queue)


def _x(i: int, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 3), i, dtype=np.float32)}


async def _request(b: Batcher, i: int, n: int = 1, pause: float = 0.0):
    with b.announce() as ticket:
        await asyncio.sleep(pause)  # "decoding"
        return await b.submit(_x(i, n), ["y"], ticket)


def test_announced_requests_are_merged_and_routed_back():
    async def main():
        run = Recorder()
        b = _batcher(run)
        b.start()
        results = await asyncio.gather(*(_request(b, i, n=1 + i % 2, pause=0.002 * i) for i in range(8)))
        await b.close()
        return run, results

    run, results = asyncio.run(main())
    assert run.sizes == [12]  # 8 requests, 12 images, one onnxruntime call
    for i, out in enumerate(results):
        assert out["y"].shape == (1 + i % 2, 3) and np.all(out["y"] == 2 * i)
        assert list(out) == ["y"]


def test_a_lone_request_does_not_wait_for_the_delay():
    """With nothing else announced, the collector runs at once: an hour's delay is never waited for."""

    async def main():
        run = Recorder()
        b = _batcher(run, delay=3600.0)
        b.start()
        out = await asyncio.wait_for(_request(b, 1), timeout=60)  # waiting out the delay would time out
        await b.close()
        return run.sizes, out

    sizes, out = asyncio.run(main())
    assert sizes == [1] and float(out["y"][0, 0]) == 2.0


def test_max_batch_is_respected():
    async def main():
        run = Recorder()
        b = _batcher(run, max_batch=4)
        b.start()
        await asyncio.gather(*(_request(b, i) for i in range(10)))
        await b.close()
        return run.sizes

    sizes = asyncio.run(main())
    assert sum(sizes) == 10 and max(sizes) <= 4 and len(sizes) >= 3


def test_full_queue_is_503_with_retry_after():
    async def main():
        gate = threading.Event()
        run = Recorder(gate)
        b = _batcher(run, max_batch=1, delay=0.0, max_queue=1)
        b.start()
        first = asyncio.create_task(_request(b, 1))
        await asyncio.sleep(0.1)  # `first` is now running (blocked in the gate)
        second = asyncio.create_task(_request(b, 2))
        await asyncio.sleep(0.05)  # `second` waits in the queue: it is full
        with pytest.raises(Overloaded) as info:
            await _request(b, 3)
        gate.set()
        done = await asyncio.gather(first, second)
        await b.close()
        return info.value, done

    err, done = asyncio.run(main())
    assert err.status == 503 and err.headers == {"Retry-After": "1"} and "queue is full" in err.message
    assert [float(d["y"][0, 0]) for d in done] == [2.0, 4.0]


def test_a_failed_run_fails_its_requests_only():
    async def main():
        run = Recorder(fail_first=True)
        b = _batcher(run, delay=0.0)
        b.start()
        with pytest.raises(RuntimeError, match="boom"):
            await _request(b, 1)
        out = await _request(b, 2)
        await b.close()
        return out

    assert float(asyncio.run(main())["y"][0, 0]) == 4.0


def test_close_fails_running_and_queued_requests():
    async def main():
        gate = threading.Event()
        b = _batcher(Recorder(gate), max_batch=1, delay=0.0)
        b.start()
        running = asyncio.create_task(_request(b, 1))
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(_request(b, 2))
        await asyncio.sleep(0.05)
        await b.close()
        gate.set()
        return await asyncio.gather(running, queued, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, Overloaded) and "shutting down" in r.message for r in results)


def _batch_stats(text: str, model: str) -> tuple[float, float]:
    labels = f'graph="model",model="{model}",version="2"'
    count = float(re.search(rf"striate_batch_size_count\{{{labels}\}} (\S+)", text).group(1))
    total = float(re.search(rf"striate_batch_size_sum\{{{labels}\}} (\S+)", text).group(1))
    return count, total


def test_concurrent_http_requests_share_onnxruntime_calls(model_dir):
    images = [digits_png_bytes(i) for i in range(24)]
    with run_server(make_settings(model_dir, max_batch_delay_ms=100.0)) as url:
        with httpx.Client(base_url=url) as c:
            alone = [
                c.post("/v1/models/tiny/classify", content=d, headers={"content-type": "image/png"}).json()
                for d in images
            ]
            before = _batch_stats(c.get("/metrics").text, "tiny")

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
                return await asyncio.gather(
                    *(
                        ac.post("/v1/models/tiny/classify", content=d, headers={"content-type": "image/png"})
                        for d in images
                    )
                )

        together = asyncio.run(burst())
        after = _batch_stats(httpx.get(f"{url}/metrics").text, "tiny")
    assert all(r.status_code == 200 for r in together)
    calls, imgs = after[0] - before[0], after[1] - before[1]
    assert imgs == 24 and calls < 24  # merged
    for a, t in zip(alone, together, strict=True):
        assert a["results"][0]["index"] == t.json()["results"][0]["index"]
        assert a["results"][0]["probability"] == pytest.approx(t.json()["results"][0]["probability"], rel=1e-5)


def test_encoded_jobs_are_prepared_in_the_worker_and_a_bad_one_fails_alone():
    """`submit_encoded`: the worker thread builds the feeds of the whole batch, then runs it once; a
    `prepare` that raises fails its own request, and the others in the batch are answered."""

    async def main():
        gate = threading.Event()
        run = Recorder(gate)
        b = _batcher(run, delay=0.0)
        b.start()
        threads: list[str] = []

        def prepare(i: int):
            def build():
                threads.append(threading.current_thread().name)
                if i == 3:
                    raise ValueError("image 3 is broken")
                return _x(i)

            return build

        key = (("x", (3,)),)
        first = asyncio.create_task(b.submit_encoded(prepare(0), 1, key, ["y"]))
        await asyncio.sleep(0.05)  # the first batch is in the worker, held by the gate
        rest = [asyncio.create_task(b.submit_encoded(prepare(i), 1, key, ["y"])) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await b.close()
        return run, threads, results

    run, threads, results = asyncio.run(main())
    assert run.sizes == [1, 4]  # the five queued meanwhile: one call, without the broken one
    assert threading.main_thread().name not in threads
    assert isinstance(results[3], ValueError) and "image 3" in str(results[3])
    for i, out in enumerate(results):
        if i != 3:
            assert float(out["y"][0, 0]) == 2.0 * i


def test_a_broken_image_in_a_burst_is_a_400_and_the_others_are_answered(model_dir):
    images = [digits_png_bytes(i) for i in range(12)]
    images[5] = b"\x89PNG\r\n\x1a\n not really a png"
    with run_server(make_settings(model_dir, max_batch_delay_ms=50.0)) as url:

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
                return await asyncio.gather(
                    *(
                        ac.post("/v1/models/tiny/classify", content=d, headers={"content-type": "image/png"})
                        for d in images
                    )
                )

        answers = asyncio.run(burst())
    assert answers[5].status_code == 400
    assert answers[5].json()["error"]["code"] == "invalid_image"
    assert all(r.status_code == 200 and r.json()["results"][0]["top_k"] for i, r in enumerate(answers) if i != 5)
