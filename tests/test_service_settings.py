"""Every service setting, set the way users set it (a `STRIATE_*` variable), changes what the server does.

Servers here are built from `Settings()` read from a controlled environment (the caller's own
`STRIATE_*` variables are removed first), so each test shows the whole path: variable -> setting ->
behaviour over HTTP on a real uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from service_fixtures import REPO, build_bundle, digits_png_bytes, make_settings, run_server

from service.inference import IDLE_DECODE_PIXELS
from service.metrics import Metrics
from service.repository import Repository
from service.settings import Settings

PNG = {"content-type": "image/png"}

# A value for every setting, unlike its default, as a user would write it in the environment.
ENVIRONMENT = {
    "model_dir": ("/srv/models", Path("/srv/models")),
    "device": ("cpu", "cpu"),
    "max_batch_size": ("7", 7),
    "max_batch_delay_ms": ("12.5", 12.5),
    "max_queue": ("3", 3),
    "workers": ("3", 3),
    "intra_op_threads": ("2", 2),
    "inter_op_threads": ("3", 3),
    "preprocess_threads": ("1", 1),
    "max_body_bytes": ("4096", 4096),
    "max_pixels": ("64", 64),
    "max_images": ("2", 2),
    # Settings of the model-control and explanation work (checked wherever the service has them).
    "model_control": ("poll", "poll"),
    "startup_models": ("digits,tiny", "digits,tiny"),
    "poll_interval": ("0.5", 0.5),
    "drain_grace": ("2.5", 2.5),
    "max_explain_targets": ("3", 3),
    "max_explain_passes": ("64", 64),
    "api_key": ("k3y", "k3y"),
    "host": ("0.0.0.0", "0.0.0.0"),
    "port": ("9123", 9123),
    "log_level": ("debug", "debug"),
}


def _clean_environment(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for key in [k for k in os.environ if k.startswith("STRIATE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(f"STRIATE_{key.upper()}", value)


@contextlib.contextmanager
def _served_from_environment(monkeypatch: pytest.MonkeyPatch, model_dir: Path, **env: str) -> Iterator[str]:
    _clean_environment(monkeypatch, model_dir=str(model_dir), log_level="warning", device="cpu", **env)
    with run_server(Settings()) as url:
        yield url


@pytest.fixture(scope="module")
def one_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("one-model")
    build_bundle(root, "tiny", 1)
    return root


def _png(size: tuple[int, int], seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 40 + seed).convert("L").save(buf, format="PNG")
    return buf.getvalue()


def _error(r: httpx.Response, status: int, code: str, *words: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    for word in words:
        assert word in err["message"], err["message"]
    return err


def test_every_setting_is_read_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = set(Settings.model_fields)
    assert fields <= set(ENVIRONMENT), f"settings with no value above: {sorted(fields - set(ENVIRONMENT))}"
    _clean_environment(monkeypatch, **{k: raw for k, (raw, _) in ENVIRONMENT.items() if k in fields})
    settings = Settings()
    for name in fields:
        expected = ENVIRONMENT[name][1]
        assert getattr(settings, name) == expected, name
        assert expected != Settings.model_fields[name].get_default(call_default_factory=True), name


def test_readme_lists_exactly_the_settings() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = re.search(r"Settings \(environment, prefix `STRIATE_`\):(.*?)\n\n", readme, re.S)
    assert listed is not None, "README's settings paragraph is gone"
    names = set(re.findall(r"`([A-Z_]+)`", listed.group(1)))
    assert names == {name.upper() for name in Settings.model_fields}


def test_test_servers_ignore_the_callers_environment(monkeypatch: pytest.MonkeyPatch, one_model: Path) -> None:
    """`make_settings` builds from explicit values: a developer's exported variables change nothing."""
    _clean_environment(monkeypatch, api_key="leaked", max_pixels="1", max_queue="1", max_images="1")
    settings = make_settings(one_model)
    assert settings.api_key is None
    assert (settings.max_pixels, settings.max_queue, settings.max_images) == (40_000_000, 256, 256)
    with run_server(settings) as url:
        r = httpx.post(f"{url}/v1/models/tiny/classify", files=[("f", digits_png_bytes(i)) for i in range(2)])
        assert r.status_code == 200, r.text


def test_limits_and_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch, one_model: Path) -> None:
    key = {"x-api-key": "k3y"}
    with (
        _served_from_environment(monkeypatch, one_model, max_pixels="64", max_images="2", api_key="k3y") as url,
        httpx.Client(base_url=url, timeout=30) as c,
    ):
        classify = "/v1/models/tiny/classify"
        _error(c.post(classify, content=digits_png_bytes(0), headers=PNG), 401, "unauthorized", "API key")
        assert c.get("/healthz").status_code == 200  # health stays open
        # STRIATE_MAX_PIXELS=64: an 8x8 image (64 pixels) passes, 9x8 (72) is refused, naming the limit.
        assert c.post(classify, content=_png((8, 8)), headers=PNG | key).status_code == 200
        _error(c.post(classify, content=_png((9, 8)), headers=PNG | key), 400, "invalid_image", "9x8", "64")
        # STRIATE_MAX_IMAGES=2
        two = [("f", digits_png_bytes(i)) for i in range(2)]
        assert c.post(classify, files=two, headers=key).status_code == 200
        three = [("f", digits_png_bytes(i)) for i in range(3)]
        _error(c.post(classify, files=three, headers=key), 413, "payload_too_large", "3 images", "limit of 2")


def test_body_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch, one_model: Path) -> None:
    small, big = digits_png_bytes(0), _png((120, 120))
    assert len(small) < 2048 < len(big)
    with _served_from_environment(monkeypatch, one_model, max_body_bytes="2048") as url:
        assert httpx.post(f"{url}/v1/models/tiny/classify", content=small, headers=PNG).status_code == 200
        r = httpx.post(f"{url}/v1/models/tiny/classify", content=big, headers=PNG)
        _error(r, 413, "payload_too_large", "2048")


async def _burst(url: str, n: int, path: str = "/v1/models/tiny/classify") -> list[httpx.Response]:
    bodies = [digits_png_bytes(i) for i in range(n)]
    async with httpx.AsyncClient(base_url=url, timeout=60) as ac:
        return await asyncio.gather(*(ac.post(path, content=b, headers=PNG) for b in bodies))


def test_full_queue_is_503_with_retry_after_over_http(monkeypatch: pytest.MonkeyPatch, one_model: Path) -> None:
    """STRIATE_MAX_QUEUE=1: of a burst of concurrent requests, those that find the queue full get a 503."""
    with _served_from_environment(monkeypatch, one_model, max_queue="1", max_batch_size="1") as url:
        refused: list[httpx.Response] = []
        for _ in range(10):  # every burst refuses some in practice; a few tries rule out an unlucky schedule
            answers = asyncio.run(_burst(url, 32))
            assert {r.status_code for r in answers} <= {200, 503}, [r.text for r in answers if r.status_code != 200]
            refused = [r for r in answers if r.status_code == 503]
            if refused:
                break
        assert refused, "32 concurrent requests against a queue of one image were all accepted"
        for r in refused:
            assert r.headers["retry-after"] == "1"
            _error(r, 503, "overloaded", "queue is full", "limit 1")
        assert httpx.get(f"{url}/readyz").status_code == 200  # overload is not unreadiness
    with run_server(make_settings(one_model)) as url:  # the default queue (256 images) takes the same bursts
        for _ in range(3):
            assert [r.status_code for r in asyncio.run(_burst(url, 32))] == [200] * 32


def _batch_stats(metrics: str) -> tuple[float, float, float]:
    """(onnxruntime calls, images, calls of at most 2 images) for tiny/1's model graph, from /metrics."""
    stats = {}
    for family in text_string_to_metric_families(metrics):
        if family.name != "striate_batch_size":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (labels["model"], labels["version"], labels["graph"]) != ("tiny", "1", "model"):
                continue
            if sample.name.endswith("_bucket") and float(labels["le"]) == 2.0:
                stats["le2"] = sample.value
            elif sample.name.endswith(("_count", "_sum")):
                stats[sample.name.rsplit("_", 1)[1]] = sample.value
    return stats["count"], stats["sum"], stats["le2"]


def test_batch_size_from_the_environment(monkeypatch: pytest.MonkeyPatch, one_model: Path) -> None:
    """STRIATE_MAX_BATCH_SIZE=2 caps every onnxruntime call; a burst still merges up to it."""
    env = {"max_batch_size": "2", "max_batch_delay_ms": "250"}
    with _served_from_environment(monkeypatch, one_model, **env) as url:
        before = _batch_stats(httpx.get(f"{url}/metrics").text)
        assert [r.status_code for r in asyncio.run(_burst(url, 24))] == [200] * 24
        after = _batch_stats(httpx.get(f"{url}/metrics").text)
        config = httpx.get(f"{url}/v2/models/tiny/config").json()
    calls, images, at_most_two = (a - b for a, b in zip(after, before, strict=True))
    assert images == 24 and at_most_two == calls  # never more than 2 images in one call
    assert calls < 24  # and bursts were merged
    assert config["max_batch_size"] == 2
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 250_000


def test_onnxruntime_threads_from_the_environment(monkeypatch: pytest.MonkeyPatch, one_model: Path) -> None:
    _clean_environment(monkeypatch, model_dir=str(one_model), device="cpu", intra_op_threads="2", inter_op_threads="3")
    repository = Repository(Settings(), Metrics())
    repository.load()
    try:
        model = repository.get("tiny")
        for graph in (model.graph, model.explain):
            options = graph.session.get_session_options()
            assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 3)
    finally:
        asyncio.run(repository.close())


def test_preprocess_threads_from_the_environment(monkeypatch: pytest.MonkeyPatch, one_model: Path) -> None:
    """Large images decode in the pool; STRIATE_PREPROCESS_THREADS=1 means one decoding thread, not four."""
    before = set(threading.enumerate())
    side = math.isqrt(IDLE_DECODE_PIXELS // 6) + 1  # together more than even an idle batch worker decodes
    files = [("f", _gradient_png(side)) for _ in range(6)]
    with _served_from_environment(monkeypatch, one_model, preprocess_threads="1") as url:
        for _ in range(3):
            assert httpx.post(f"{url}/v1/models/tiny/classify", files=files, timeout=60).status_code == 200
        decoders = [t for t in set(threading.enumerate()) - before if t.name.startswith("striate-decode")]
    assert len(decoders) == 1


def test_a_lone_photo_is_decoded_by_the_idle_batch_worker(monkeypatch: pytest.MonkeyPatch, one_model: Path) -> None:
    """An idle batcher decodes a photo with its run (no decode thread starts); a broken one is still a 400."""
    before = set(threading.enumerate())
    photo = _png((400, 400))
    assert len(photo) > 64 * 1024  # not a small file: without the idle rule it would go to the decode threads
    with _served_from_environment(monkeypatch, one_model) as url:
        for _ in range(3):
            assert httpx.post(f"{url}/v1/models/tiny/classify", content=photo, headers=PNG).status_code == 200
        broken = httpx.post(f"{url}/v1/models/tiny/classify", content=photo[: len(photo) // 2], headers=PNG)
        _error(broken, 400, "invalid_image", "image 0")
        assert httpx.post(f"{url}/v1/models/tiny/classify", content=photo, headers=PNG).status_code == 200
        decoders = [t for t in set(threading.enumerate()) - before if t.name.startswith("striate-decode")]
    assert decoders == []


def _gradient_png(side: int) -> bytes:
    """A side x side PNG of a few kilobytes per megapixel."""
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((side, side)).save(buf, format="PNG")
    return buf.getvalue()


def _big_png() -> bytes:
    """36 Mpixel but 50 kB: decoding and shrinking it takes the server 0.1 to 0.3 seconds."""
    return _gradient_png(6000)


BIG_IMAGES = 8  # one decoding thread takes them in turn: the slow request stays announced for a second or more


async def _small_after_big(url: str, big: bytes) -> None:
    """The big request is announced first; the small one arrives, decodes at once and finds the queue empty."""
    bigs = [("f", big)] * BIG_IMAGES
    async with httpx.AsyncClient(base_url=url, timeout=120) as ac:
        slow = asyncio.create_task(ac.post("/v1/models/tiny/classify", files=bigs))
        await asyncio.sleep(0.15)  # orders the two requests; nothing here measures time
        fast = await ac.post("/v1/models/tiny/classify", content=digits_png_bytes(0), headers=PNG)
        assert fast.status_code == 200 and (await slow).status_code == 200


def test_batch_delay_from_the_environment(monkeypatch: pytest.MonkeyPatch, one_model: Path) -> None:
    """STRIATE_MAX_BATCH_DELAY_MS: a request waits (up to the delay) for one still decoding, and they share a call.

    Without the wait, the small image would run alone as soon as it is decoded.
    """
    big = _big_png()
    env = {"max_batch_delay_ms": "60000", "preprocess_threads": "1"}
    with _served_from_environment(monkeypatch, one_model, **env) as url:
        merged = False
        for _ in range(3):  # a starved client could send the small one late; one clean ordering suffices
            before = _batch_stats(httpx.get(f"{url}/metrics").text)
            asyncio.run(_small_after_big(url, big))
            after = _batch_stats(httpx.get(f"{url}/metrics").text)
            calls, images, _ = (a - b for a, b in zip(after, before, strict=True))
            assert images == BIG_IMAGES + 1
            if calls == 1:
                merged = True
                break
        assert merged, "the small request never waited for the one being decoded"
