"""A bundle carries its training figures and report; the service serves them; the model card shows them.

The figures come from a real training report (training.analysis.report.write_report on a run's
history and metrics), the bundles from the real exporter, the HTTP answers from a real uvicorn
server, and the card from headless Chromium (skipped where Chromium is missing, as in test_web_page).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from service_fixtures import DEFAULT_BUNDLE, REPO, build_bundle, make_settings, run_server, tiny_net
from web_browser import open_page, screenshot, settle

from striate.manifest import Manifest, Preprocessing

LABELS = [f"class_{i}" for i in range(10)]
LOADED = "s => (i => i && i.complete && i.naturalWidth > 0)(document.querySelector(s))"  # an <img> decoded


def write_run(run_dir: Path) -> Path:
    """A run directory as `striate train` leaves it: history, test metrics, then its report."""
    from training.analysis.report import write_report

    run_dir.mkdir(parents=True, exist_ok=True)
    history = [
        {"epoch": e, "train_loss": 2 / e, "train_acc": 0.5 + e / 10, "val_loss": 2 / e, "val_acc": acc, "seconds": 12.3}
        for e, acc in enumerate([0.6, 0.8, 0.9, 0.85], start=1)
    ]
    (run_dir / "history.json").write_text(json.dumps(history))
    confusion = [[9 if i == j else 0 for j in range(10)] for i in range(10)]
    confusion[3][5] = 2  # two 3s read as 5s
    metrics = {"labels": LABELS, "accuracy": 90 / 92, "confusion": confusion, "split": "test", "count": 92}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    write_report(run_dir)
    return run_dir


def export_with_report(out_root: Path, report_dir: Path | None, name: str = "tinyfig") -> Path:
    from training.export import export_model

    spec = Preprocessing(color_mode="L", resize_size=(8, 8), crop_size=(8, 8), mean=(0.5,), std=(0.25,))
    return export_model(
        tiny_net(1, 10, 0), LABELS, spec, name, 1, out_root, metrics={"accuracy": 0.5}, report_dir=report_dir
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("run") / "digits-run")


@pytest.fixture(scope="module")
def figures_models(tmp_path_factory, run_dir) -> Path:
    root = tmp_path_factory.mktemp("figure-models")
    export_with_report(root, run_dir)
    build_bundle(root, "plain", 1)  # exported without a report
    return root


@pytest.fixture(scope="module")
def site(figures_models) -> Iterator[str]:
    with run_server(make_settings(figures_models)) as url:
        yield url


# ---- the exporter ----------------------------------------------------------------------------


def test_the_exporter_copies_the_figures_and_a_self_contained_report(figures_models, run_dir) -> None:
    bundle = figures_models / "tinyfig" / "1"
    manifest = Manifest.load(bundle)
    assert set(manifest.figures) == {"curves", "confusion"}
    for name in ("curves", "confusion"):
        copied = bundle / manifest.figures[name].file
        assert copied.read_bytes() == (run_dir / f"{name}.png").read_bytes()
    assert "best epoch 3 of 4" in manifest.figures["curves"].caption
    assert "test split: 92 images, 2 wrong" in manifest.figures["confusion"].caption
    assert manifest.report == "figures/report.html"
    page = (bundle / manifest.report).read_text()
    assert 'src="curves.png"' not in page and page.count('src="data:image/png;base64,') == 2
    assert "Confusion matrix (test split)" in page and "best epoch (kept as best.pt)" in page


def test_a_bundle_exported_without_a_report_lists_no_figures(figures_models) -> None:
    manifest = Manifest.load(figures_models / "plain" / "1")
    assert manifest.figures == {} and manifest.report is None
    assert not (figures_models / "plain" / "1" / "figures").exists()
    written = json.loads((figures_models / "plain" / "1" / "manifest.json").read_text())
    assert "figures" not in written and "report" not in written  # services older than figures read it too


def test_the_report_is_found_beside_the_checkpoint_or_in_its_run_directory(tmp_path: Path, run_dir) -> None:
    from training.export.figures import report_dir_of

    run = write_run(tmp_path / "runs" / "r1")
    (run / "best.pt").write_bytes(b"")
    assert report_dir_of(run / "best.pt") == run
    shutil.copytree(run_dir, tmp_path / "checkpoints" / "model.report")
    (tmp_path / "checkpoints" / "model.pt").write_bytes(b"")
    assert report_dir_of(tmp_path / "checkpoints" / "model.pt") == tmp_path / "checkpoints" / "model.report"
    (tmp_path / "checkpoints" / "other.pt").write_bytes(b"")
    assert report_dir_of(tmp_path / "checkpoints" / "other.pt") is None


@pytest.mark.parametrize("file", ["model.onnx", "figures/../model.onnx", "/etc/passwd.png", "figures/a/b.png"])
def test_a_manifest_cannot_point_a_figure_outside_its_figures_folder(figures_models, file) -> None:
    doc = json.loads((figures_models / "tinyfig" / "1" / "manifest.json").read_text())
    doc["figures"]["curves"]["file"] = file
    with pytest.raises(ValidationError, match="inside the bundle"):
        Manifest.model_validate(doc)


def test_the_default_bundle_carries_its_training_figures() -> None:
    """The committed bundle shows the committed checkpoint's own training run (its report beside it)."""
    manifest = Manifest.load(DEFAULT_BUNDLE)
    assert set(manifest.figures) == {"curves", "confusion"} and manifest.report is not None
    beside = REPO / "checkpoints" / "digits_default.report"
    for figure in manifest.figures.values():
        data = (DEFAULT_BUNDLE / figure.file).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data == (beside / Path(figure.file).name).read_bytes()
    assert "test split" in manifest.figures["confusion"].caption and "best epoch" in manifest.figures["curves"].caption
    size = sum(p.stat().st_size for p in (DEFAULT_BUNDLE / "figures").iterdir())
    assert size < 1_000_000, f"the figures add {size} bytes to the default bundle"


# ---- the service -----------------------------------------------------------------------------


def test_the_model_detail_lists_the_figures_with_their_urls(site) -> None:
    detail = httpx.get(f"{site}/v1/models/tinyfig/versions/1").json()
    assert [f["name"] for f in detail["figures"]] == ["curves", "confusion"]
    assert detail["figures"][0]["url"] == "/v1/models/tinyfig/versions/1/figures/curves"
    assert detail["report"] == "/v1/models/tinyfig/versions/1/report"
    plain = httpx.get(f"{site}/v1/models/plain").json()
    assert plain["figures"] == [] and plain["report"] is None


def test_a_figure_is_served_as_png(site, figures_models) -> None:
    r = httpx.get(f"{site}/v1/models/tinyfig/versions/1/figures/confusion")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (figures_models / "tinyfig" / "1" / "figures" / "confusion.png").read_bytes()
    assert httpx.get(f"{site}/v1/models/tinyfig/figures/curves").status_code == 200  # latest version


@pytest.mark.parametrize(
    ("model", "figure"),
    [("tinyfig", "loss"), ("tinyfig", "curves.png"), ("tinyfig", "..%2Fmodel.onnx"), ("plain", "curves")],
)
def test_an_unknown_figure_is_a_json_404(site, model, figure) -> None:
    r = httpx.get(f"{site}/v1/models/{model}/versions/1/figures/{figure}")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "not_found"
    if "%2F" not in figure:  # a path is never a figure's name: no route matches it at all
        assert f"no figure {figure!r}" in r.json()["error"]["message"]


def test_the_report_is_served_as_sandboxed_html(site) -> None:
    r = httpx.get(f"{site}/v1/models/tinyfig/versions/1/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"].startswith("sandbox")
    assert "Training report" in r.text
    missing = httpx.get(f"{site}/v1/models/plain/versions/1/report")
    assert missing.status_code == 404 and "no training report" in missing.json()["error"]["message"]


def test_the_figure_routes_need_the_key_when_the_service_has_one(figures_models) -> None:
    with run_server(make_settings(figures_models, api_key="k3y")) as url:
        path = f"{url}/v1/models/tinyfig/versions/1/figures/curves"
        assert httpx.get(path).status_code == 401
        assert httpx.get(path, headers={"X-API-Key": "k3y"}).status_code == 200


def test_the_openapi_document_declares_the_figure_routes(site) -> None:
    paths = httpx.get(f"{site}/openapi.json").json()["paths"]
    figure = paths["/v1/models/{name}/versions/{version}/figures/{figure}"]["get"]["responses"]
    assert "image/png" in figure["200"]["content"]
    assert {"401", "404"} <= set(figure)
    assert figure["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    report = paths["/v1/models/{name}/versions/{version}/report"]["get"]["responses"]
    assert "text/html" in report["200"]["content"] and "404" in report


# ---- the page --------------------------------------------------------------------------------


def _pick(page, model: str) -> None:
    page.select_option("#model", model)
    page.wait_for_function(f"document.getElementById('model-card').textContent.includes('{model} v')")
    settle(page)


def test_the_model_card_shows_the_figures_and_the_report(browser, site):
    page, watch = open_page(browser, site)
    _pick(page, "tinyfig")
    for name in ("curves", "confusion"):
        selector = f'#training figure[data-figure="{name}"] img'
        page.wait_for_function(LOADED, arg=selector)
        assert page.locator(selector).is_visible()
    assert "2 wrong" in page.locator('#training figure[data-figure="confusion"] figcaption').inner_text()
    page.click("#report summary")
    frame = page.frame_locator("#report iframe")
    frame.get_by_text("Confusion matrix (test split)").first.wait_for()  # the frame loads after the click
    screenshot(page, "card-training-figures.png")
    _pick(page, "plain")
    assert page.locator("#training").count() == 0
    assert watch.console_errors == [] and watch.outside_requests == []
    page.close()


def test_the_card_fetches_the_figures_with_the_api_key(browser, figures_models):
    with run_server(make_settings(figures_models, api_key="s3cret")) as url:
        page, watch = open_page(browser, url)
        page.fill("#api-key", "s3cret")
        page.press("#api-key", "Enter")
        page.wait_for_function("document.getElementById('model').options.length > 0")
        _pick(page, "tinyfig")
        page.wait_for_function(
            "[...document.querySelectorAll('#training img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        assert watch.outside_requests == []
        page.close()
