"""A bundle's training figures (PNG) and training report (HTML), as the model card shows them.

Only what the manifest lists is served, by name, from the bundle's own folder: a figure name is a
key of `manifest.figures`, never a path, and the resolved file must lie inside the bundle. The
report is static HTML written by the exporter (figures inlined); it is sent with a sandboxing
Content-Security-Policy, so even a bundle from elsewhere cannot run a script on the service's origin.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.deps import ApiKey, ModelDep
from service.errors import NotFound
from service.repository import LoadedModel
from service.routes.common import error_responses, model_route
from service.schemas import FigureInfo

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[ApiKey], responses=error_responses(401))

REPORT_POLICY = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CACHE = "private, max-age=3600"  # a version's files never change (versions are never overwritten)


def figure_url(model: LoadedModel, name: str) -> str:
    return f"/v1/models/{model.name}/versions/{model.version}/figures/{name}"


def report_url(model: LoadedModel) -> str:
    return f"/v1/models/{model.name}/versions/{model.version}/report"


def figures_of(model: LoadedModel) -> list[FigureInfo]:
    """The figures the model card shows, with the URLs that serve them."""
    return [
        FigureInfo(name=name, caption=figure.caption, url=figure_url(model, name))
        for name, figure in model.manifest.figures.items()
    ]


def _bundle_file(model: LoadedModel, relative: str, what: str) -> Path:
    bundle = model.path.resolve()
    path = (bundle / relative).resolve()
    if not path.is_relative_to(bundle) or not path.is_file():
        raise NotFound(f"{what} of {model.name} v{model.version} is listed but missing from its bundle")
    return path


@model_route(
    router,
    "get",
    "/figures/{figure}",
    summary="a training figure of the model (PNG)",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}, "description": "the figure"}, **error_responses(404)},
)
async def get_figure(model: ModelDep, figure: str) -> FileResponse:
    listed = model.manifest.figures.get(figure)
    if listed is None:
        known = ", ".join(sorted(model.manifest.figures)) or "none (exported without a training report)"
        raise NotFound(f"no figure {figure!r} in {model.name} v{model.version}; its figures: {known}")
    path = _bundle_file(model, listed.file, f"figure {figure!r}")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": CACHE})


@model_route(
    router,
    "get",
    "/report",
    summary="the model's training report (HTML, figures inlined)",
    response_class=FileResponse,
    responses={200: {"content": {"text/html": {}}, "description": "the report"}, **error_responses(404)},
)
async def get_report(model: ModelDep) -> FileResponse:
    if model.manifest.report is None:
        raise NotFound(f"{model.name} v{model.version} carries no training report (exported without one)")
    path = _bundle_file(model, model.manifest.report, "the training report")
    headers = {"Content-Security-Policy": REPORT_POLICY, "Cache-Control": CACHE, "X-Content-Type-Options": "nosniff"}
    return FileResponse(path, media_type="text/html; charset=utf-8", headers=headers)
