"""Headless Chromium (Debian's `chromium`) driven by Playwright, for the web page tests.

scripts/test.sh installs the browser with apt when it is missing. The flags keep Chromium from
reaching for the network on its own (updates, sync, QUIC), which a closed network refuses.
Without a browser the tests are skipped, unless STRIATE_REQUIRE_BROWSER=1 (CI sets it): then they fail,
so a run that could not start Chromium never passes as if the page had been tested.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "web"
CHROMIUM = os.environ.get("STRIATE_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
REQUIRE_BROWSER = "STRIATE_REQUIRE_BROWSER"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class PageWatch:
    """What the page did besides rendering: console errors, uncaught exceptions, outside requests."""

    base: str
    console_errors: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)

    def attach(self, page) -> None:
        page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))
        page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"))

        def only_loopback(route) -> None:
            url = route.request.url
            if url.startswith(self.base) or url.startswith(("blob:", "data:")):
                route.continue_()
            else:  # nothing outside the service: an offline page must not need it
                self.outside_requests.append(url)
                route.abort()

        page.route("**/*", only_loopback)


def no_browser(why: str) -> None:
    """Skip the browser tests, or fail them where a browser is required."""
    if os.environ.get(REQUIRE_BROWSER) == "1":
        pytest.fail(f"{why} ({REQUIRE_BROWSER}=1: the browser tests must run here)", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        no_browser(f"Chromium not found at {CHROMIUM}: scripts/test.sh installs Debian's chromium package")
    try:
        from playwright import sync_api
    except ImportError:
        no_browser("playwright is not installed: it is in the dev extra")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, base: str, viewport=(1280, 900)):
    """A fresh page on `base` + "/", watched, after the page says it is ready."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    watch = PageWatch(base)
    watch.attach(page)
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready]")
    return page, watch


def settle(page) -> None:
    """Wait until no request of the page is in flight."""
    page.wait_for_function("!document.body.dataset.busy")


def screenshot(page, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def image_pixels(page, selector: str) -> np.ndarray:
    """The decoded pixels of an <img> as the browser holds them (its source bytes, decoded by Pillow)."""
    from PIL import Image

    data = page.evaluate(
        """async (sel) => {
            const blob = await (await fetch(document.querySelector(sel).src)).blob();
            return Array.from(new Uint8Array(await blob.arrayBuffer()));
        }""",
        selector,
    )
    return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"), dtype=np.float32)


def draw_strokes(page, selector: str, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw with the mouse: each stroke is points in [0, 1] of the element's box, pressed then released."""
    page.locator(selector).scroll_into_view_if_needed()
    box = page.locator(selector).bounding_box()
    assert box is not None
    for stroke in strokes:
        x0, y0 = stroke[0]
        page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=12)
        page.mouse.up()
    # Each lifted stroke sends the drawing; wait until every panel shows the last one.
    page.wait_for_function(
        f"(p => p.dataset.emitted && p.dataset.read === p.dataset.emitted)(document.querySelector({selector!r}))"
    )
