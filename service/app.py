"""The FastAPI application: `create_app(settings)`, and `app` for `uvicorn service.app:app`."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.errors import install_handlers
from service.inference import Inference
from service.limits import BodyLimitMiddleware
from service.metrics import Metrics, MetricsMiddleware
from service.repository import Repository
from service.routes import (
    activations,
    classify,
    explain,
    features,
    figures,
    health,
    models,
    repository,
    v2,
    v2_explain,
)
from service.routes.common import install_openapi
from service.routes.ui import install_ui
from service.settings import Settings, get_settings
from striate import __version__

log = logging.getLogger("striate.service")

DESCRIPTION = """Image classification, features, Grad-CAM explanations and activation maps from
ONNX bundles (`exported/<name>/<version>/`), plus the Open Inference Protocol (KServe v2) with
Triton's binary tensor extension. Concurrent requests are batched dynamically. With
`STRIATE_API_KEY` set, send `Authorization: Bearer <key>` (or `X-API-Key`) to every route but health.
Errors are JSON: `{"error": {"code", "message"}}` on v1, `{"error": "message"}` on v2."""

# Every router the app serves, in order; a new router is one more line here.
ROUTERS = (
    health.router,
    models.router,
    figures.router,
    classify.router,
    features.router,
    explain.router,
    activations.router,
    v2.health,
    v2.models,
    v2_explain.router,
    repository.router,
)


def configure_logging(level: str) -> None:
    """Send the service's logs (models loaded, providers, broken bundles) to stderr, under any runner.

    `uvicorn service.app:app` configures only uvicorn's own loggers, so without this our INFO lines
    would be dropped.
    """
    logger = logging.getLogger("striate")
    logger.setLevel(level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings.log_level)
        repo = Repository(settings, metrics)
        await asyncio.to_thread(repo.load)
        log.info(
            "serving %d model version(s) from %s; %d broken; model control: %s",
            len(repo.all_models()),
            settings.model_dir,
            len(repo.broken),
            settings.model_control,
        )
        await repo.start()
        app.state.repository = repo
        app.state.inference = Inference(settings)
        # Everything built so far (app, schemas, sessions) lives as long as the server: out of the
        # collector's sight, a full collection no longer walks it (long pauses, a worse p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            app.state.inference.close()
            await repo.close()

    app = FastAPI(
        title="Striate", version=__version__, description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.draining = False  # set on SIGTERM (service/server.py): readiness 503, connections close
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_openapi(app)
    install_ui(app)  # the web page at /, offline /docs and /redoc
    # Outermost first: metrics see every request, including those the body limit refuses.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def __getattr__(name: str):
    """`service.app:app` is built on first access, so importing this module has no side effects."""
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(name)
