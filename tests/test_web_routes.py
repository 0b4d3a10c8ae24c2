"""The page's routes over HTTP (no browser): served without the API key, docs assets local, not in OpenAPI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_fixtures import build_bundle, make_settings, run_server


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("ui-models")
    build_bundle(root, "tiny", 1)
    with run_server(make_settings(root, api_key="k3y")) as url:
        yield url


def test_the_page_and_its_files_need_no_key_but_the_api_still_does(keyed_server) -> None:
    page = httpx.get(keyed_server + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert httpx.get(keyed_server + asset).status_code == 200, asset
    assert (
        httpx.get(keyed_server + "/static/js/app.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )
    assert httpx.get(keyed_server + "/static/samples/index.json").json()["samples"]
    assert httpx.get(keyed_server + "/favicon.ico").status_code == 200
    assert httpx.get(keyed_server + "/v1/models").status_code == 401
    assert httpx.get(keyed_server + "/v1/models", headers={"X-API-Key": "k3y"}).status_code == 200


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_load_their_scripts_from_the_service(keyed_server, path) -> None:
    html = httpx.get(keyed_server + path).text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    scripts = [a for a in assets if a.endswith((".js", ".css"))]
    assert scripts and all(a.startswith("/static-docs/") for a in scripts), assets
    for asset in scripts:
        response = httpx.get(keyed_server + asset)
        assert response.status_code == 200 and len(response.content) > 10_000, asset
    assert "fonts.googleapis" not in html


def test_the_page_routes_stay_out_of_the_api_description(keyed_server) -> None:
    paths = httpx.get(keyed_server + "/openapi.json").json()["paths"]
    assert not {"/", "/docs", "/redoc", "/favicon.ico"} & set(paths)
    assert "/v1/models/{name}/classify" in paths


@pytest.mark.parametrize("path", ["/", "/favicon.ico", "/docs", "/redoc", "/static/js/app.js"])
def test_the_page_routes_answer_head_like_get(keyed_server, path) -> None:
    head, get = httpx.head(keyed_server + path), httpx.get(keyed_server + path)
    assert head.status_code == get.status_code == 200
    assert head.headers["content-type"] == get.headers["content-type"] and head.content == b""


def test_redocs_script_is_served_without_its_cdn_logo(keyed_server) -> None:
    html = httpx.get(keyed_server + "/redoc").text
    (script,) = [a for a in re.findall(r'src="([^"]+)"', html) if "redoc" in a]
    body = httpx.get(keyed_server + script).text
    assert "cdn.redoc.ly" not in body and "data:image/svg+xml" in body


def test_a_required_browser_that_is_missing_fails_the_tests_instead_of_skipping(tmp_path) -> None:
    tests = Path(__file__).resolve().parent
    (tmp_path / "test_needs_browser.py").write_text("def test_it(browser):\n    pass\n")
    (tmp_path / "conftest.py").write_text("from web_browser import browser  # noqa: F401\n")
    env = os.environ | {"PYTHONPATH": str(tests), "STRIATE_CHROMIUM": str(tmp_path / "no-chromium")}

    def run(require: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
            env=env | {"STRIATE_REQUIRE_BROWSER": require},
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )

    skipped, required = run("0"), run("1")
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    assert required.returncode == 1 and "STRIATE_REQUIRE_BROWSER=1" in required.stdout, required.stdout
