"""The sample inputs, the README's curl lines and the page's files, without a browser.

The curl lines are run literally from the repository root (with the test server's port in place of
localhost:8000) against a real uvicorn server holding the committed default bundle.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_fixtures import DEFAULT_BUNDLE, make_settings, run_server

from striate.preprocess import decode_image

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "service" / "static"
SAMPLES = STATIC / "samples"
INDEX = json.loads((SAMPLES / "index.json").read_text(encoding="utf-8"))["samples"]
DIGITS = [s for s in INDEX if s["kind"] == "digit"]
needs_default = pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no default bundle")


def test_the_index_lists_every_sample_and_each_is_a_small_image() -> None:
    listed = sorted(s["file"] for s in INDEX)
    on_disk = sorted(p.name for p in SAMPLES.iterdir() if p.name != "index.json")
    assert listed == on_disk
    assert (REPO / "samples").resolve() == SAMPLES.resolve(), "samples/ at the root is the page's samples"
    assert {s["kind"] for s in INDEX} == {"digit", "photo"}
    assert all(s["label"] in "0123456789" and len(s["label"]) == 1 for s in DIGITS)
    for sample in INDEX:
        path = SAMPLES / sample["file"]
        assert path.stat().st_size < 100_000, f"{path.name} is too big for the repository"
        decode_image(path.read_bytes())


def test_the_page_loads_nothing_from_outside() -> None:
    """Every src/href/url() in the page's files points inside the service."""
    outside = re.compile(
        r"""(?:src|href)\s*=\s*["']?(?:https?:)?//"""  # <script src=...>, <link href=...>
        r"""|url\(\s*["']?(?:https?:)?//"""  # CSS
        r"""|(?:import|from)\s*\(?\s*["'](?:https?:)?//"""  # ES modules
    )
    for path in STATIC.rglob("*"):
        if path.suffix in {".html", ".js", ".css"}:
            text = path.read_text(encoding="utf-8")
            assert not outside.search(text), f"{path.relative_to(REPO)} loads something from outside"


@pytest.fixture(scope="module")
def default_server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("default-models")
    shutil.copytree(DEFAULT_BUNDLE, root / "digits" / "1")
    with run_server(make_settings(root)) as url:
        yield url


@needs_default
@pytest.mark.parametrize("sample", DIGITS, ids=[s["file"] for s in DIGITS])
def test_the_default_model_reads_every_digit_sample(default_server, sample) -> None:
    path = SAMPLES / sample["file"]
    kind = "image/jpeg" if path.suffix == ".jpg" else "image/png"
    url = f"{default_server}/v1/models/digits/classify"
    response = httpx.post(url, content=path.read_bytes(), headers={"Content-Type": kind}, timeout=60)
    assert response.status_code == 200, response.text
    top = response.json()["results"][0]
    assert top["label"] == sample["label"], f"{sample['file']}: read as {top['label']} (p = {top['probability']:.2f})"


def readme_curl_lines() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("curl ")]
    return [line.split("  #")[0].strip() for line in lines if "localhost:8000" in line]


@needs_default
@pytest.mark.parametrize("line", readme_curl_lines())
def test_every_readme_curl_line_works_from_the_repository_root(default_server, line) -> None:
    assert shutil.which("curl"), "curl is needed to run the README's lines"
    for token in shlex.split(line):
        if token.startswith("@") or token.startswith("files=@"):
            assert (REPO / token.split("@", 1)[1]).is_file(), f"{token} does not exist in the repository"
    host = default_server.removeprefix("http://")
    command = line.replace("localhost:8000", host)
    done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    if "-o " in command:
        target = shlex.split(command)[shlex.split(command).index("-o") + 1]
        assert Path(target).read_bytes().startswith(b"\x89PNG")
    else:
        body = json.loads(done.stdout)
        assert "error" not in body, body
