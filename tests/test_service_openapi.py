"""The OpenAPI document tells the truth: schemathesis against the live server (all phases, every
check, bounded in time) finds no server error, no undocumented status and no response off its schema."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from service_fixtures import digits_png_bytes, make_settings, run_server

from service.routes.common import IMAGE_ROUTE_ERRORS

# Seconds schemathesis may spend (its phases repeat until the budget is spent).
BUDGET_S = int(os.environ.get("STRIATE_SCHEMATHESIS_SECONDS", "75"))

CONFIG = """
[checks.positive_data_acceptance]
# A schema-valid request the server still refuses for what a schema cannot state: bytes that do
# not decode as an image or a tensor header (400), a model or version that does not exist (404),
# a layer or class the model lacks or several images for one PNG answer (422), a model whose load
# failed or a request in a mode that does not allow it (409).
expected-statuses = [200, 400, 404, 409, 422]

[[operations]]
# Readiness answers its documented 503 whenever no model serves (the run may unload them all).
include-path = ["/readyz", "/v2/health/ready"]
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
checks.positive_data_acceptance.expected-statuses = [200, 503]

[dictionaries.models]
values = {models}

[dictionaries.versions]
values = ["1", "2"]

[parameters]
# Most cases name a model and version that exist, so that they reach past the 404.
"path.name" = {{ dictionary = "models", probability = 0.8 }}
"path.version" = {{ dictionary = "versions", probability = 0.8 }}
"""


def test_every_route_documents_its_errors(server):
    spec = httpx.get(f"{server}/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if method == "post" and path.startswith("/v1/models/"):
                assert {str(s) for s in IMAGE_ROUTE_ERRORS} <= set(op["responses"]), (method, path)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    want = "V2ErrorBody" if path.startswith("/v2") else "ErrorBody"
                    assert ref.endswith("/" + want), (method, path, status, ref)


def test_live_server_survives_the_errors_it_documents(server):
    """One request per documented error status of classify actually gets that status and body."""
    good = digits_png_bytes(0)
    png = {"content-type": "image/png"}
    cases = {
        400: httpx.post(f"{server}/v1/models/tiny/classify", content=b"junk", headers=png),
        404: httpx.post(f"{server}/v1/models/nope/classify", content=good, headers=png),
        415: httpx.post(f"{server}/v1/models/tiny/classify", content=good, headers={"content-type": "text/csv"}),
        422: httpx.post(f"{server}/v1/models/tiny/classify?top_k=0", content=good, headers=png),
    }
    for status, r in cases.items():
        assert r.status_code == status and set(r.json()["error"]) == {"code", "message"}, (status, r.text)


def test_the_api_key_is_documented_only_when_the_server_needs_one(server, model_dir):
    """With STRIATE_API_KEY set, every route that answers 401 without the key declares the key's
    schemes (so /docs offers Authorize) and each declared scheme is accepted; without it, none."""
    open_spec = httpx.get(f"{server}/openapi.json").json()
    assert "securitySchemes" not in open_spec.get("components", {})
    assert not [p for p, ops in open_spec["paths"].items() for op in ops.values() if "security" in op]

    with run_server(make_settings(model_dir, api_key="s3cret")) as url:
        spec = httpx.get(f"{url}/openapi.json").json()
        schemes = spec["components"]["securitySchemes"]
        assert schemes == {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "Bearer": {"type": "http", "scheme": "bearer"},
        }
        secured = {p for p, ops in spec["paths"].items() for op in ops.values() if "security" in op}
        for path, operations in spec["paths"].items():
            if "get" not in operations or "{" in path:
                continue
            answer = httpx.get(f"{url}{path}")
            assert (answer.status_code == 401) == (path in secured), (path, answer.status_code)
            if path in secured:
                assert operations["get"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
                assert httpx.get(f"{url}{path}", headers={"X-API-Key": "s3cret"}).status_code == 200
                bearer = {"Authorization": "Bearer s3cret"}
                assert httpx.get(f"{url}{path}", headers=bearer).status_code == 200
        assert {"/v1/models", "/metrics", "/v1/models/{name}/classify"} <= secured
        assert not {"/healthz", "/v2/health/live"} & secured


@pytest.mark.slow
def test_schemathesis_finds_nothing(model_dir, tmp_path):
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if cli is None:
        pytest.fail("schemathesis is not installed (pip install -e '.[dev]')")
    models = sorted(p.name for p in model_dir.iterdir() if (p / "1").is_dir() and p.name != "broken")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(models=models))
    root = tmp_path / "models"  # its own copy: in explicit mode the run loads and unloads models
    shutil.copytree(model_dir, root)
    with run_server(make_settings(root, model_control="explicit")) as url:
        run = subprocess.run(
            [
                cli,
                "--config-file",
                str(config),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--max-time",
                str(BUDGET_S),
                "--workers",
                "1",
                "--request-timeout",
                "30",
                "--max-failures",
                "20",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=BUDGET_S + 240,
            env=os.environ | {"NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
        )
    report = run.stdout[-12000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert re.search(r"\d+ generated", report), report  # cases were run, not skipped
