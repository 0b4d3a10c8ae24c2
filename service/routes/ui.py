"""The web page at `/`, its static files, and offline `/docs` and `/redoc`.

The page (service/static/: plain HTML, CSS and JavaScript, no build step, no CDN) calls only the
public API, so what it shows a person is what a client gets. Swagger UI's and ReDoc's scripts come
from the `fastapi-offline` package, so the API documentation renders without the internet; ReDoc's
script is served with its one outside address (the sidebar credit's logo) replaced by a local image.
None of these routes needs the API key: the page asks for it and sends it as a header.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_URL = "/static"  # the page's own files, samples included (samples/index.json lists them)
DOCS_ASSETS_URL = "/static-docs"  # Swagger UI and ReDoc bundles
REDOC_JS_URL = f"{DOCS_ASSETS_URL}/redoc.offline.js"  # redoc.standalone.js without its CDN logo
REDOC_CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
PAGE_METHODS = ["GET", "HEAD"]  # HEAD too: a probe or a link checker asks for headers only

router = APIRouter(include_in_schema=False)


def _docs_assets_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


@router.api_route("/", methods=PAGE_METHODS)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.api_route("/favicon.ico", methods=PAGE_METHODS)
async def favicon() -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


@router.api_route("/docs", methods=PAGE_METHODS)
async def swagger_ui(request: Request) -> HTMLResponse:
    app = request.app
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}/favicon.ico",
    )


@router.api_route("/docs/oauth2-redirect", methods=PAGE_METHODS)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.api_route("/redoc", methods=PAGE_METHODS)
async def redoc(request: Request) -> HTMLResponse:
    app = request.app
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{REDOC_JS_URL}",
        redoc_favicon_url=f"{root}/favicon.ico",
        with_google_fonts=False,
    )


@lru_cache(maxsize=1)
def _offline_redoc_js() -> bytes:
    """ReDoc's bundle with the logo it fetches from its CDN swapped for our local one, inlined."""
    script = (_docs_assets_dir() / "redoc.standalone.js").read_text(encoding="utf-8")
    logo = base64.b64encode((STATIC_DIR / "redoc-logo.svg").read_bytes()).decode("ascii")
    return script.replace(REDOC_CDN_LOGO, f"data:image/svg+xml;base64,{logo}").encode("utf-8")


@router.api_route(REDOC_JS_URL, methods=PAGE_METHODS)
async def redoc_js() -> Response:
    return Response(_offline_redoc_js(), media_type="text/javascript")


def install_ui(app: FastAPI) -> None:
    """Serve the page, its files and the offline docs (create the app with docs_url=redoc_url=None)."""
    app.include_router(router)  # before the mounts: REDOC_JS_URL lies under DOCS_ASSETS_URL
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=_docs_assets_dir()), name="static-docs")
