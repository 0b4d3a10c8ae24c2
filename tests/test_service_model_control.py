"""Model control like Triton's: explicit load/unload through the repository API (stock tritonclient),
polling, version policies, atomic swaps, drains; real bundles copied into a tmp repository."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import tritonclient.http as tritonhttp
from service_fixtures import digits_png_bytes, make_settings, run_server
from tritonclient.utils import InferenceServerException

PNG = {"content-type": "image/png"}


def place(model_dir: Path, root: Path, name: str, version: int, source: str = "tiny/1") -> Path:
    """Copy a real bundle to root/name/version, its manifest saying where it now sits."""
    dest = root / name / str(version)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(model_dir / source, dest)
    manifest = dest / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"name": name, "version": version}))
    return dest


def _index(triton) -> dict[tuple[str, str], dict]:
    return {(row["name"], row.get("version", "")): row for row in triton.get_model_repository_index()}


def _classify(url: str, name: str, version: int | None = None) -> httpx.Response:
    path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "") + "/classify"
    return httpx.post(url + path, content=digits_png_bytes(3), headers=PNG, timeout=30)


@pytest.fixture
def explicit(model_dir, tmp_path):
    root = tmp_path / "repo"
    place(model_dir, root, "m", 1)
    with run_server(make_settings(root, model_control="explicit", drain_grace=20)) as url:
        triton = tritonhttp.InferenceServerClient(url[len("http://") :])
        yield root, url, triton
        triton.close()


def test_explicit_load_new_version_broken_version_and_unload(model_dir, explicit):
    root, url, triton = explicit
    assert "model_repository" in triton.get_server_metadata()["extensions"]
    assert _index(triton)[("m", "1")]["state"] == "READY"

    place(model_dir, root, "m", 2, "tiny/2")
    assert not triton.is_model_ready("m", "2")  # not before it is loaded
    triton.load_model("m")
    assert triton.is_model_ready("m", "2") and triton.is_model_ready("m", "1")
    assert _classify(url, "m").json()["version"] == 2

    broken = place(model_dir, root, "m", 3)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(InferenceServerException) as info:
        triton.load_model("m")
    assert info.value.status() == "400" and "version 3" in info.value.message()
    assert "still serving versions [1, 2]" in info.value.message()
    row = _index(triton)[("m", "3")]
    assert row["state"] == "UNAVAILABLE" and "onnx" in row["reason"].lower()
    assert _classify(url, "m").json()["version"] == 2  # the old latest keeps serving
    listed = httpx.get(url + "/v1/models").json()
    assert [(b["name"], b["version"]) for b in listed["broken"]] == [("m", "3")]

    triton.unload_model("m")
    assert not triton.is_model_ready("m")
    assert {row["state"] for key, row in _index(triton).items() if key[1] in ("1", "2")} == {"UNAVAILABLE"}
    r = _classify(url, "m")
    assert r.status_code == 404 and "unloaded" in r.json()["error"]["message"]
    assert httpx.get(url + "/readyz").status_code == 503  # nothing serves
    shutil.rmtree(broken)
    triton.load_model("m")
    assert _classify(url, "m").status_code == 200


def test_version_policy_file(model_dir, explicit):
    root, _url, triton = explicit
    place(model_dir, root, "m", 2, "tiny/2")
    (root / "m" / "config.json").write_text(json.dumps({"version_policy": {"latest": {"num_versions": 1}}}))
    triton.load_model("m")
    assert triton.is_model_ready("m", "2") and not triton.is_model_ready("m", "1")
    assert "version policy (latest 1)" in _index(triton)[("m", "1")]["reason"]
    (root / "m" / "config.json").write_text(json.dumps({"version_policy": {"specific": {"versions": [1]}}}))
    triton.load_model("m")
    assert triton.is_model_ready("m", "1") and not triton.is_model_ready("m", "2")
    (root / "m" / "config.json").write_text(json.dumps({"version_policy": {"newest": 2}}))
    with pytest.raises(InferenceServerException) as info:
        triton.load_model("m")
    assert "config.json" in info.value.message() and triton.is_model_ready("m", "1")


def test_control_api_errors(explicit):
    _root, url, triton = explicit
    with pytest.raises(InferenceServerException) as info:
        triton.load_model("nothing")
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException) as info:
        triton.load_model("m", config='{"backend": "onnxruntime"}')
    assert info.value.status() == "400" and "not supported" in info.value.message()
    r = httpx.post(url + "/v2/repository/index", content=b"[1]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "object" in r.json()["error"]
    ready_only = httpx.post(url + "/v2/repository/index", json={"ready": True}).json()
    assert ready_only == [{"name": "m", "version": "1", "state": "READY"}]


def test_swaps_are_atomic_under_load(model_dir, explicit):
    """Clients hammer a version while it is replaced in place again and again: every request is
    answered 200 by one complete copy or the other, never an error or a closed connection."""
    root, url, triton = explicit
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/models/m/versions/1/classify", content=digits_png_bytes(3), headers=PNG)
                statuses.append(r.status_code)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for round_ in range(7):  # ends on tiny/2: a swap that never happened would show
            place(model_dir, root, "m", 1, "tiny/2" if round_ % 2 == 0 else "tiny/1")
            triton.load_model("m")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    served = httpx.get(url + "/v1/models/m/versions/1").json()["provenance"]["created"]
    assert served == json.loads((model_dir / "tiny/2/manifest.json").read_text())["provenance"]["created"]


def test_unload_waits_for_requests_in_flight(model_dir, tmp_path):
    """A request holding version 1 finishes on it while an unload waits; then the version closes."""
    from service.metrics import Metrics
    from service.repository import Repository, State

    root = tmp_path / "repo"
    place(model_dir, root, "m", 1)

    async def scenario() -> None:
        repo = Repository(make_settings(root, model_control="explicit", drain_grace=30), Metrics())
        repo.load()
        await repo.start()
        model = repo.get("m", "1")
        with model.lease():
            unloading = asyncio.create_task(repo.unload("m"))
            for _ in range(20):
                await asyncio.sleep(0)
            assert not unloading.done() and repo.status["m"]["1"].state is State.UNLOADING
            assert "m" not in repo.models  # no new request reaches it
            spec = model.manifest.input
            import numpy as np

            image = np.zeros((1, spec.channels, spec.height, spec.width), np.float32)
            out = await model.batcher.submit({spec.name: image}, ["logits"])  # the leased copy still runs
            assert out["logits"].shape == (1, 10)
        await unloading
        assert repo.status["m"]["1"] == repo.status["m"]["1"].__class__(State.UNAVAILABLE, reason="unloaded")
        await repo.close()

    asyncio.run(scenario())


def test_poll_mode_picks_up_new_and_removed_versions(model_dir, tmp_path):
    root = tmp_path / "repo"
    place(model_dir, root, "m", 1)
    with run_server(make_settings(root, model_control="poll", poll_interval=0.2)) as url:
        triton = tritonhttp.InferenceServerClient(url[len("http://") :])
        with pytest.raises(InferenceServerException) as info:
            triton.load_model("m")
        assert info.value.status() == "409" and "STRIATE_MODEL_CONTROL=explicit" in info.value.message()
        place(model_dir, root, "m", 2, "tiny/2")
        place(model_dir, root, "n", 1)
        _wait(lambda: triton.is_model_ready("m", "2") and triton.is_model_ready("n"))
        shutil.rmtree(root / "m" / "1")
        _wait(lambda: not triton.is_model_ready("m", "1"))
        assert _classify(url, "m").json()["version"] == 2
        triton.close()


def test_none_mode_refuses_control(model_dir, tmp_path):
    root = tmp_path / "repo"
    place(model_dir, root, "m", 1)
    with run_server(make_settings(root)) as url:
        r = httpx.post(url + "/v2/repository/models/m/unload")
        assert r.status_code == 409 and "explicit" in r.json()["error"]
        assert httpx.post(url + "/v2/repository/index").json() == [{"name": "m", "version": "1", "state": "READY"}]


def _wait(condition, limit_s: float = 60.0) -> None:
    """Wait for something the server does on its own schedule (polling); fails only if it never happens."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never came true")
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("config", "served"),
    [
        (None, [1, 2, 5]),
        ({"version_policy": {"all": {}}}, [1, 2, 5]),
        ({"version_policy": {"latest": {"num_versions": 2}}}, [2, 5]),
        ({"version_policy": {"latest": {}}}, [5]),
        ({"version_policy": {"specific": {"versions": [1, 3]}}}, [1]),
    ],
)
def test_version_policy_selects(tmp_path, config, served):
    from service.policy import load_config

    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_config(tmp_path).version_policy.select([5, 1, 2]) == served


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "not valid JSON"),
        ('{"version_policy": {}}', "exactly one of all, latest, specific"),
        ('{"version_policy": {"all": {}, "latest": {}}}', "exactly one"),
        ('{"version_policy": {"latest": {"num_versions": 0}}}', "num_versions"),
        ('{"version_policy": {"specific": {"versions": []}}}', "versions"),
        ('{"versions": 1}', "versions"),
    ],
)
def test_bad_version_policy_says_what_is_wrong(tmp_path, text, words):
    from service.policy import load_config

    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=r"config\.json") as info:
        load_config(tmp_path)
    assert words in str(info.value)


def test_explicit_startup_models(model_dir, tmp_path):
    """Like Triton's --load-model: in explicit mode only the named models load at start-up."""
    root = tmp_path / "repo"
    place(model_dir, root, "m", 1)
    place(model_dir, root, "n", 1)
    with run_server(make_settings(root, model_control="explicit", startup_models="n")) as url:
        triton = tritonhttp.InferenceServerClient(url[len("http://") :])
        assert triton.is_model_ready("n") and not triton.is_model_ready("m")
        assert {"name": "m", "state": "UNAVAILABLE", "reason": "not loaded"} in triton.get_model_repository_index()
        triton.load_model("m")
        assert triton.is_model_ready("m")
        triton.close()


def test_a_request_held_past_the_drain_grace_gets_a_503_not_a_hang(model_dir, tmp_path):
    import numpy as np

    from service.errors import Overloaded
    from service.metrics import Metrics
    from service.repository import Repository

    root = tmp_path / "repo"
    place(model_dir, root, "m", 1)

    async def scenario() -> None:
        repo = Repository(make_settings(root, model_control="explicit", drain_grace=0.01), Metrics())
        repo.load()
        await repo.start()
        model = repo.get("m")
        with model.lease():
            await repo.unload("m")  # the grace passes with the lease still held: closed anyway
            spec = model.manifest.input
            image = np.zeros((1, spec.channels, spec.height, spec.width), np.float32)
            with pytest.raises(Overloaded, match="unloaded"):
                await model.batcher.submit({spec.name: image}, ["logits"])
        await repo.close()

    asyncio.run(scenario())
