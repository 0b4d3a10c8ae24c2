"""The Kubernetes and KServe manifests under deploy/, validated offline and against the service.

- Plain Kubernetes (Deployment, Service, HPA, PDB): `kubernetes-validate` in strict mode, with the
  JSON schemas of the Kubernetes API that the package ships (unknown fields are errors).
- KServe (ServingRuntime, InferenceService): the openAPIV3Schema of KServe's own CRDs, shipped in
  deploy/kserve/schemas/, made strict the way the API server's pruning is (an object that lists its
  properties and does not preserve unknown fields accepts no others).
- Against the code: every probe path is a route the app serves, every STRIATE_* variable is a
  setting, the container port is the one the service is told to listen on, and the pod runs as the
  Dockerfile's user.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.app import create_app
from service.settings import Settings

K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests promise to work on
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
KSERVE_FILES = sorted((DEPLOY / "kserve").glob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _strict(schema):
    """Objects that list their properties accept no others, unless they preserve unknown fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _kserve_validator(doc: dict) -> jsonschema.Draft7Validator:
    group, version = doc["apiVersion"].split("/")
    for path in (DEPLOY / "kserve" / "schemas").glob("*.json.gz"):
        crd = json.loads(gzip.decompress(path.read_bytes()))
        if (crd["group"], crd["version"], crd["kind"]) == (group, version, doc["kind"]):
            return jsonschema.Draft7Validator(_strict(crd["schema"]))
    raise AssertionError(f"no shipped schema for {doc['apiVersion']} {doc['kind']}")


def _containers(doc: dict) -> list[dict]:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"]
    if doc["kind"] == "ServingRuntime":
        return doc["spec"]["containers"]
    return []


ALL_DOCS = [(path.name, doc) for path in K8S_FILES + KSERVE_FILES for doc in _docs(path)]


def test_every_expected_kind_is_there():
    kinds = sorted(doc["kind"] for _, doc in ALL_DOCS)
    assert kinds == sorted(
        [
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServingRuntime",
            "InferenceService",
        ]
    )


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_kubernetes_manifests_are_valid_in_strict_mode(path):
    for doc in _docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", KSERVE_FILES, ids=lambda p: p.name)
def test_kserve_manifests_match_kserve_crd_schemas(path):
    for doc in _docs(path):
        errors = [e.message for e in _kserve_validator(doc).iter_errors(doc)]
        assert not errors, errors


def test_the_checks_reject_a_misspelt_field():
    """Both validators bite: a typo that Kubernetes would drop silently is an error here."""
    deployment = copy.deepcopy(next(doc for _, doc in ALL_DOCS if doc["kind"] == "Deployment"))
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    runtime = copy.deepcopy(next(doc for _, doc in ALL_DOCS if doc["kind"] == "ServingRuntime"))
    runtime["spec"]["containers"][0]["readinesProbe"] = runtime["spec"]["containers"][0].pop("readinessProbe")
    assert any("readinesProbe" in e.message for e in _kserve_validator(runtime).iter_errors(runtime))
    isvc = copy.deepcopy(next(doc for _, doc in ALL_DOCS if doc["kind"] == "InferenceService"))
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    assert any("storageURI" in e.message for e in _kserve_validator(isvc).iter_errors(isvc))


def test_probes_hit_real_routes_and_env_names_real_settings():
    app = create_app(Settings(model_dir=Path("/nonexistent")))
    routes = set(app.openapi()["paths"])  # the documented routes (the OpenAPI document tells the truth)
    settings = {f"STRIATE_{name.upper()}" for name in Settings.model_fields}
    checked = 0
    for name, doc in ALL_DOCS:
        for container in _containers(doc):
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert set(env) <= settings, f"{name}: unknown settings {set(env) - settings}"
            Settings(**{k.removeprefix("STRIATE_").lower(): v for k, v in env.items()})  # values parse
            port = int(env.get("STRIATE_PORT", Settings.model_fields["port"].default))
            assert [p["containerPort"] for p in container["ports"]] == [port], name
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                get = container[probe]["httpGet"]
                assert get["path"] in routes, f"{name}: {probe} path {get['path']} is not served"
                assert get["port"] in (port, container["ports"][0]["name"]), name
                checked += 1
    assert checked == 6


def test_pods_run_as_the_dockerfile_user():
    dockerfile = (DEPLOY.parent / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))
    for name, doc in ALL_DOCS:
        if doc["kind"] == "Deployment":
            assert doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid, name
        for container in _containers(doc):
            ctx = container.get("securityContext", {})
            assert ctx.get("runAsUser", uid) == uid and ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True and ctx["capabilities"]["drop"] == ["ALL"], name


def test_inference_service_uses_the_striate_runtime():
    runtime = next(doc for _, doc in ALL_DOCS if doc["kind"] == "ServingRuntime")
    isvc = next(doc for _, doc in ALL_DOCS if doc["kind"] == "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [
        {k: f[k] for k in ("name", "version")} for f in runtime["spec"]["supportedModelFormats"]
    ]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    env = {e["name"]: e["value"] for e in runtime["spec"]["containers"][0]["env"]}
    assert env["STRIATE_MODEL_DIR"] == "/mnt/models"  # where KServe's storage initializer puts storageUri
