"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.deps import ApiKey, RepositoryDep
from service.errors import NotReady

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="readiness: at least one model is loaded")
async def readyz(repository: RepositoryDep) -> dict:
    if not repository.ready:
        raise NotReady("no model is loaded; see GET /v1/models for the errors")
    return {"status": "ready", "models": sorted(repository.models), "broken": len(repository.broken)}


@router.get("/metrics", summary="Prometheus metrics", dependencies=[ApiKey], response_class=Response)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(content=m.render(), media_type=m.content_type)
