"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.deps import ApiKey, RepositoryDep
from service.errors import NotReady
from service.routes.common import error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


def check_ready(request: Request, repository) -> None:
    """Ready: at least one model serves, and the server is not draining (SIGTERM)."""
    if getattr(request.app.state, "draining", False):
        raise NotReady("the server is shutting down", headers={"Connection": "close"})
    if not repository.ready:
        raise NotReady("no model is loaded; see GET /v1/models for the errors")


@router.get(
    "/readyz", summary="readiness: at least one model is loaded, not shutting down", responses=error_responses(503)
)
async def readyz(request: Request, repository: RepositoryDep) -> dict:
    check_ready(request, repository)
    return {"status": "ready", "models": sorted(repository.models), "broken": len(repository.broken)}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    dependencies=[ApiKey],
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}} | error_responses(401),
)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(content=m.render(), media_type=m.content_type)
