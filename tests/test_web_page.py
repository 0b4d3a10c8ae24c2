"""The web page at `/` in a real browser (headless Chromium) against a real uvicorn server.

The server holds the committed default digits bundle and a small RGB bundle made with the tests'
exporter; every request outside the server is refused, so the page is proven to work offline.
Screenshots land in artifacts/web/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_fixtures import DEFAULT_BUNDLE, build_bundle, make_settings, run_server, without_gradient_graph
from web_browser import draw_strokes, image_pixels, open_page, screenshot, settle

from striate.explain.methods import METHODS

pytestmark = pytest.mark.skipif(
    not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="the default digits bundle is not exported"
)

# A "7" as a person draws it on the pad: the top bar, then the slanted stem.
SEVEN = [[(0.22, 0.2), (0.78, 0.2), (0.45, 0.85)]]
# A "4": the open diagonal and crossbar, then the upright.
FOUR = [[(0.58, 0.12), (0.2, 0.62), (0.82, 0.62)], [(0.6, 0.35), (0.6, 0.9)]]
# The elements that stick out past the right edge of the window, for a failing width check.
WIDER_THAN_THE_SCREEN = """() => [...document.querySelectorAll("body *")]
    .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)
    .map((e) => `${e.tagName}#${e.id}.${e.className} ends at ${Math.round(e.getBoundingClientRect().right)}`)"""


@pytest.fixture(scope="module")
def web_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("web-models")
    shutil.copytree(DEFAULT_BUNDLE, root / "digits" / "1")
    build_bundle(root, "photos", 1, color_mode="RGB", size=(32, 32), num_classes=3, seed=3)
    build_bundle(root, "photos", 2, color_mode="RGB", size=(32, 32), num_classes=3, seed=4)
    without_gradient_graph(build_bundle(root, "nograd", 1))  # no explain graph: no gradient methods
    _import_resnet18(root)
    return root


def _import_resnet18(root: Path) -> None:
    """A foreign ONNX classifier (torchvision resnet18 written by torch.onnx) through `import_onnx`."""
    from tests.import_fixtures import LABELS, PREPROCESSING, onnx_file
    from training.importer import import_onnx
    from training.importer.api import list_tensors

    path = onnx_file("torchvision-resnet18")
    _, target = list_tensors(path, PREPROCESSING)
    import_onnx(path, LABELS, PREPROCESSING, "imported", out_root=root, target_tensor=target)


@pytest.fixture(scope="module")
def site(web_models) -> Iterator[str]:
    with run_server(make_settings(web_models)) as url:
        yield url


def pick_sample(page, file: str) -> None:
    page.click(f'.sample[data-file="{file}"]')
    page.wait_for_selector("#top1")
    page.wait_for_function("document.getElementById('overlay').dataset.request !== undefined")
    settle(page)


def pick_model(page, select: str, value: str, card: str) -> None:
    """Choose `value` in the model or version `select` and wait until the card shows `card`."""
    page.select_option(select, value)
    page.wait_for_function(f"document.getElementById('model-card').textContent.includes({card!r})")
    settle(page)


def redraw_with(page, select: str, value: str) -> None:
    """Choose `value` in `select` and wait for the overlay the page requests for it."""
    before = page.locator("#overlay").get_attribute("data-request")
    page.select_option(select, value)
    page.wait_for_function(f"document.getElementById('overlay').dataset.request !== {before!r}")
    settle(page)


def test_page_reads_a_clicked_sample_and_shows_every_panel(browser, site):
    page, watch = open_page(browser, site)
    assert page.title().startswith("Striate")
    assert page.locator("#model").input_value() == "digits"
    card = page.locator("#model-card").inner_text()
    assert "resnet18" in card and "grayscale 32×32" in card and "float32" in card
    assert "against the torch model: max |Δ| logits" in card
    pick_sample(page, "digit-3-dark-on-light.png")
    assert page.locator("#top1").inner_text() == "3"
    assert page.locator("#prediction .bar").count() == 5
    assert page.locator("#prediction .bar.best").get_attribute("data-label") == "3"
    page.wait_for_selector("#activations:not([hidden])")
    assert "layer2" in page.locator("#act-caption").inner_text()
    assert page.locator("#overlay").is_visible()
    screenshot(page, "page-digit-sample.png")
    assert watch.console_errors == []
    assert watch.outside_requests == []
    page.close()


def test_a_digit_drawn_with_the_mouse_is_read(browser, site):
    page, watch = open_page(browser, site)
    page.click("#tab-draw")
    draw_strokes(page, "#pad", SEVEN)
    page.wait_for_function("document.getElementById('top1')?.textContent === '7'")
    page.click("#clear")
    page.check("#invert")  # chalk on a board: the other polarity
    draw_strokes(page, "#pad", FOUR)
    page.wait_for_function("document.getElementById('top1')?.textContent === '4'")
    settle(page)
    screenshot(page, "page-drawn-digit.png")
    assert watch.console_errors == []
    page.close()


def test_switching_the_target_class_and_opacity_changes_the_overlay(browser, site):
    page, watch = open_page(browser, site)
    pick_sample(page, "digit-7-light-on-dark.png")
    assert page.locator("#top1").inner_text() == "7"
    predicted = image_pixels(page, "#overlay")
    assert "“7”" in page.locator("#overlay-caption").inner_text()
    before = page.locator("#overlay").get_attribute("data-request")
    page.select_option("#target", label="1")
    page.wait_for_function(f"document.getElementById('overlay').dataset.request !== {before!r}")
    settle(page)
    other = image_pixels(page, "#overlay")
    assert "“1”" in page.locator("#overlay-caption").inner_text()
    assert np.abs(predicted - other).mean() > 1.0, "the map for class 1 looks like the map for class 7"
    before = page.locator("#overlay").get_attribute("data-request")
    page.fill("#alpha", "0.9")
    page.wait_for_function(f"document.getElementById('overlay').dataset.request !== {before!r}")
    settle(page)
    stronger = image_pixels(page, "#overlay")
    assert np.abs(stronger - other).mean() > 1.0, "opacity did not change the overlay"
    assert watch.console_errors == []
    page.close()


def test_switching_the_method_changes_the_overlay(browser, site):
    page, watch = open_page(browser, site)
    methods = page.locator("#method option").all_inner_texts()
    assert len(methods) >= 2, f"the bundle offers one explanation method only: {methods}"
    pick_sample(page, "digit-4-photo.jpg")
    first = image_pixels(page, "#overlay")
    first_summary = page.locator("#method-summary").inner_text()
    values = page.locator("#method option").evaluate_all("options => options.map(o => o.value)")
    current = page.locator("#method").input_value()
    other = next(v for v in values if v != current)
    redraw_with(page, "#method", other)
    assert np.abs(first - image_pixels(page, "#overlay")).mean() > 1.0, "a second method drew the same map"
    # Each method says how it makes its map, in the registry's words.
    assert first_summary == METHODS[current].summary
    assert page.locator("#method-summary").inner_text() == METHODS[other].summary != first_summary
    screenshot(page, "page-method-switch.png")
    assert watch.console_errors == []
    page.close()


def test_an_rgb_bundle_takes_photos_and_says_what_it_cannot_do(browser, site):
    page, watch = open_page(browser, site)
    page.select_option("#model", "photos")
    page.wait_for_function("document.getElementById('tab-draw').disabled")
    card = page.locator("#model-card").inner_text()
    assert "RGB 32×32" in card and "No drawing pad" in card
    assert page.locator(".sample").first.get_attribute("data-kind") == "photo"
    assert "photos v2 (latest)" in card
    pick_sample(page, "photo-cat.jpg")
    assert page.locator("#prediction .bar").count() == 3
    assert page.locator("#top1").inner_text().startswith("class_")
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))
    pick_model(page, "#version", "1", "photos v1")
    assert any(url.endswith("/v1/models/photos/versions/1/classify?top_k=3") for url in sent), sent
    assert page.locator("#prediction .bar").count() == 3
    screenshot(page, "page-rgb-bundle.png")
    assert watch.console_errors == []
    page.close()


def test_an_imported_onnx_classifier_is_read_and_explained_like_an_exported_one(browser, site):
    page, watch = open_page(browser, site)
    pick_model(page, "#model", "imported", "imported v1")
    assert "against the source ONNX graph" in page.locator("#model-card").inner_text()
    methods = page.locator("#method option").evaluate_all("options => options.map(o => o.value)")
    assert {"gradcam", "gradcampp", "scorecam"} <= set(methods), methods
    pick_sample(page, "photo-cat.jpg")
    from tests.import_fixtures import LABELS

    assert page.locator("#prediction .bar").count() == min(5, len(LABELS))
    assert page.locator("#top1").inner_text().split()[0] in LABELS
    first = image_pixels(page, "#overlay")
    redraw_with(page, "#method", "layercam")
    assert np.abs(first - image_pixels(page, "#overlay")).mean() > 0.5, "LayerCAM drew Grad-CAM's map"
    screenshot(page, "page-imported-bundle.png")
    assert watch.console_errors == []
    page.close()


def test_the_api_key_is_asked_for_and_sent_as_a_header(browser, web_models):
    with run_server(make_settings(web_models, api_key="s3cret-key")) as url:
        page, watch = open_page(browser, url)
        assert "API key" in page.locator("#banner").inner_text()
        sent: list[dict] = []
        page.on("request", lambda r: r.url.startswith(url + "/v1/") and sent.append({"url": r.url, **r.headers}))
        page.fill("#api-key", "s3cret-key")
        page.press("#api-key", "Enter")
        page.wait_for_function("document.getElementById('model').options.length > 0")
        pick_sample(page, "digit-3-dark-on-light.png")
        assert page.locator("#top1").inner_text() == "3"
        assert sent and all(r.get("x-api-key") == "s3cret-key" for r in sent)
        assert not any("s3cret" in r["url"] for r in sent), "the key leaked into a URL"
        assert watch.outside_requests == []
        page.close()


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".swagger-ui .info .title"), ("/redoc", "redoc h1")])
def test_the_api_docs_render_offline(browser, site, path, rendered):
    page, watch = open_page(browser, site)
    page.goto(site + path)
    page.wait_for_selector(rendered, timeout=60_000)
    assert "Striate" in page.locator(rendered).first.inner_text()
    page.wait_for_load_state("networkidle")  # ReDoc's sidebar credit logo loads after the title
    screenshot(page, f"docs{path.replace('/', '-')}.png", full_page=False)
    assert watch.outside_requests == []
    page.close()


@pytest.mark.parametrize("how", ["file", "drop", "paste"])
def test_an_image_can_be_chosen_dropped_or_pasted(browser, site, how):
    page, watch = open_page(browser, site)
    sample = "digit-7-light-on-dark.png"
    if how == "file":
        page.set_input_files("#file", str(Path(__file__).resolve().parents[1] / "samples" / sample))
    else:  # the events a browser fires for a dropped or pasted file, carrying a real File
        page.evaluate(
            """async ([how, url]) => {
                const blob = await (await fetch(url)).blob();
                const data = new DataTransfer();
                data.items.add(new File([blob], "digit.png", { type: "image/png" }));
                const event = how === "drop"
                    ? new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true })
                    : new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
                (how === "drop" ? document.getElementById("dropzone") : document).dispatchEvent(event);
            }""",
            [how, f"/static/samples/{sample}"],
        )
    page.wait_for_function("document.getElementById('top1')?.textContent === '7'")
    assert page.locator("#preview").is_visible()
    settle(page)
    assert watch.console_errors == []
    page.close()


def test_a_bundle_without_an_explain_graph_offers_only_what_it_can(browser, site):
    detail = httpx.get(f"{site}/v1/models/nograd").json()
    page, watch = open_page(browser, site)
    pick_model(page, "#model", "nograd", "nograd v1")
    offered = page.locator("#method option").all_inner_texts()
    if detail["explain"] is None:  # before the explain contract: nothing to offer, and the page says so
        assert offered == [] and page.locator("#method").is_disabled()
        assert "no explanation methods" in page.locator("#explain-note").inner_text()
        assert "No explanations" in page.locator("#model-card").inner_text()
    else:  # under it: the gradient-free methods only
        methods = detail["explain"]["methods"]
        assert all(m["kind"] == "forward" for m in methods)
        assert offered == [m.get("title") or m["name"] for m in methods]
    page.click('.sample[data-file="digit-3-dark-on-light.png"]')
    page.wait_for_selector("#top1")
    settle(page)
    assert page.locator("#overlay").is_visible() == bool(detail["explain"])  # no empty image frame
    screenshot(page, "page-no-explain-graph.png")
    assert watch.console_errors == []
    page.close()


def test_a_file_that_is_not_an_image_gets_the_services_message_not_a_stale_answer(browser, site):
    page, watch = open_page(browser, site)
    pick_sample(page, "digit-3-dark-on-light.png")
    page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}])
    page.wait_for_selector("#banner:not([hidden])")
    settle(page)
    message = httpx.post(
        f"{site}/v1/models/digits/classify", content=b"not an image", headers={"Content-Type": "image/png"}
    ).json()["error"]["message"]
    assert page.locator("#banner").inner_text() == message
    assert page.locator("#top1").count() == 0 and "No answer" in page.locator("#prediction").inner_text()
    assert not page.locator("#overlay").is_visible() and not page.locator("#activations").is_visible()
    # The browser reports the refused request itself; nothing else may go wrong.
    assert [e for e in watch.console_errors if "status of 400" not in e] == []
    page.close()


@pytest.mark.parametrize("viewport", [(375, 667), (360, 740), (320, 568)])
def test_the_page_fits_a_phone_and_its_scaled_pad_still_reads_a_digit(browser, site, viewport):
    page, watch = open_page(browser, site, viewport=viewport)
    pick_sample(page, "digit-3-dark-on-light.png")
    page.locator("#model-card").scroll_into_view_if_needed()
    if page.locator("#report").count():
        page.click("#report summary")
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    screenshot(page, f"page-phone-{viewport[0]}.png")
    assert page.evaluate(fits), page.evaluate(WIDER_THAN_THE_SCREEN)
    page.click("#tab-draw")
    pad = page.locator("#pad").bounding_box()
    assert pad["width"] <= viewport[0] - 40 and abs(pad["width"] - pad["height"]) < 1  # shrunk, still square
    draw_strokes(page, "#pad", SEVEN)
    page.wait_for_function("document.getElementById('top1')?.textContent === '7'")
    settle(page)
    assert page.evaluate(fits)
    assert watch.console_errors == []
    page.close()


def test_a_class_agnostic_method_locks_the_class_and_says_why(browser, site):
    page, watch = open_page(browser, site)
    pick_sample(page, "digit-7-light-on-dark.png")
    assert page.locator("#target").is_enabled()
    assert "raised its score" in page.locator("#overlay-caption").inner_text()
    redraw_with(page, "#method", "eigencam")
    assert page.locator("#target").is_disabled()
    assert "same for every class" in page.locator("#target-note").inner_text()
    assert page.locator("#target-note").is_visible()
    caption = page.locator("#overlay-caption").inner_text()
    assert "same for every class" in caption and "raised its score" not in caption, caption
    screenshot(page, "page-eigencam.png")
    redraw_with(page, "#method", "gradcam")
    assert page.locator("#target").is_enabled() and not page.locator("#target-note").is_visible()
    assert watch.console_errors == []
    page.close()


def test_a_bundle_without_a_gradient_graph_says_which_methods_it_lacks_and_why(browser, site):
    explain = httpx.get(f"{site}/v1/models/nograd").json()["explain"]
    page, watch = open_page(browser, site)
    pick_model(page, "#model", "nograd", "nograd v1")
    limits = page.locator("#model-card .limits").inner_text()
    near_picker = page.locator("#method-note").inner_text()
    assert page.locator("#method-note").is_visible()
    assert {m["kind"] for m in explain["unavailable"]} == {"gradient"}
    for text in (limits, near_picker):
        assert "explain.onnx" in text, text
        for missing in explain["unavailable"]:  # each method, with the service's reason
            assert missing["title"] in text and missing["why"] in text, text
    pick_model(page, "#model", "digits", "digits v1")
    assert not page.locator("#method-note").is_visible()
    assert "explain.onnx" not in page.locator("#model-card").inner_text()
    assert watch.console_errors == []
    page.close()


def test_a_sample_dragged_onto_the_drop_zone_is_read(browser, site):
    page, watch = open_page(browser, site)
    page.drag_and_drop('.sample[data-file="digit-7-light-on-dark.png"] img', "#dropzone")
    page.wait_for_function("document.getElementById('top1')?.textContent === '7'")
    settle(page)
    assert page.locator("#banner").is_hidden()
    assert page.locator("#preview").is_visible()
    assert watch.console_errors == []
    page.close()


def test_an_image_unlike_what_the_model_expects_is_marked_and_its_answer_qualified(browser, site):
    page, watch = open_page(browser, site)
    photo = page.locator('.sample[data-file="photo-astronaut.jpg"]')
    assert "grayscale 32×32" in photo.get_attribute("title")
    assert "expects" in photo.inner_text()
    pick_sample(page, "photo-astronaut.jpg")
    note = page.locator("#prediction-note")
    assert note.is_visible() and "always answers one of its 10 labels" in note.inner_text()
    screenshot(page, "page-photo-on-digits.png")
    pick_sample(page, "digit-3-dark-on-light.png")
    assert not note.is_visible()
    # A colour photo uploaded as a file is recognised too (no sample to go by).
    page.set_input_files("#file", str(Path(__file__).resolve().parents[1] / "samples" / "photo-cat.jpg"))
    page.wait_for_selector("#prediction-note:not([hidden])")
    settle(page)
    assert "colour photo" in note.inner_text()
    # On the RGB model a photo is what it expects: no note, no mark.
    page.select_option("#model", "photos")
    page.wait_for_function("document.getElementById('tab-draw').disabled")
    settle(page)
    assert not note.is_visible()
    assert "expects" not in page.locator('.sample[data-file="photo-cat.jpg"]').inner_text()
    assert watch.console_errors == []
    page.close()


def test_clear_empties_the_pad_and_the_panels_that_showed_its_drawing(browser, site):
    page, watch = open_page(browser, site)
    page.click("#tab-draw")
    draw_strokes(page, "#pad", SEVEN)
    page.wait_for_function("document.getElementById('top1')?.textContent === '7'")
    settle(page)
    page.click("#clear")
    assert page.locator("#top1").count() == 0
    assert not page.locator("#overlay").is_visible() and not page.locator("#activations").is_visible()
    assert page.locator("#overlay-caption").inner_text() == "" and page.locator("#act-caption").inner_text() == ""
    assert watch.console_errors == []
    page.close()


def test_the_channel_menu_reaches_every_channel_of_the_layer(browser, site):
    page, watch = open_page(browser, site)
    pick_sample(page, "digit-3-dark-on-light.png")
    page.select_option("#layer", "layer4")  # 128 channels
    values = page.locator("#channels option").evaluate_all("options => options.map(o => o.value)")
    assert values[-1] == "128", values
    before = page.locator("#act-caption").inner_text()
    page.select_option("#channels", "128")
    page.wait_for_function(f"document.getElementById('act-caption').textContent !== {before!r}")
    settle(page)
    assert "channels 128/128" in page.locator("#act-caption").inner_text()
    page.select_option("#layer", "layer1")  # 16 channels: nothing above 16 is offered
    values = page.locator("#channels option").evaluate_all("options => options.map(o => o.value)")
    assert values == ["16"], values
    assert watch.console_errors == []
    page.close()


def test_the_page_is_idle_only_once_every_panel_shows_the_new_answer(browser, site):
    page, watch = open_page(browser, site)
    pick_sample(page, "digit-7-light-on-dark.png")
    # Record what the panels show at the very moment the busy flag goes away.
    page.evaluate(
        """() => {
            window.idleSeen = [];
            new MutationObserver(() => {
                if (!document.body.dataset.busy) window.idleSeen.push(
                    document.getElementById("overlay-caption").textContent);
            }).observe(document.body, { attributes: true, attributeFilter: ["data-busy"] });
        }"""
    )
    page.select_option("#target", label="1")
    settle(page)
    seen = page.evaluate("window.idleSeen")
    assert seen and all("“1”" in caption for caption in seen), seen
    # A clicked sample is fetched first: the page is busy from the click on, not from its request.
    page.click('.sample[data-file="digit-3-dark-on-light.png"]')
    settle(page)
    assert page.locator("#top1").inner_text() == "3"
    assert watch.console_errors == []
    page.close()


def test_a_missing_or_refused_api_key_is_said_on_the_banner_and_the_card(browser, web_models):
    with run_server(make_settings(web_models, api_key="s3cret-key")) as url:
        page, watch = open_page(browser, url)
        assert "needs an API key" in page.locator("#banner").inner_text()
        assert "needs an API key" in page.locator("#model-card").inner_text()
        page.fill("#api-key", "wrong-key")
        page.press("#api-key", "Enter")
        page.wait_for_function("document.getElementById('banner').textContent.includes('refused')")
        settle(page)
        assert "refused" in page.locator("#model-card").inner_text()
        assert "Loading" not in page.locator("#model-card").inner_text()
        assert watch.outside_requests == []
        page.close()
