"""`striate serve`: the model repository over HTTP, on every core (service/parallelism.py chooses)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default: STRIATE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: STRIATE_PORT or 8000)")
    parser.add_argument("--model-dir", type=Path, help="model repository (default: STRIATE_MODEL_DIR or exported/)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda", "auto"], help="default: STRIATE_DEVICE or auto (CUDA if present)"
    )
    parser.add_argument("--api-key", help="require this key on every route but health (or STRIATE_API_KEY)")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port (default: STRIATE_WORKERS, or one per usable core; "
        "each loads every model)",
    )
    parser.add_argument(
        "--model-control",
        choices=["none", "poll", "explicit"],
        help="none: load at start-up; poll: rescan every STRIATE_POLL_INTERVAL s; explicit: the "
        "repository API (POST /v2/repository/...) loads and unloads (default: STRIATE_MODEL_CONTROL or none)",
    )


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.metrics import multiprocess_metrics
    from service.parallelism import plan
    from service.runtime import providers_for
    from service.settings import Settings
    from service.workers import WorkerPool, serve_one
    from striate.errors import StriateError

    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "model_dir": args.model_dir,
            "device": args.device,
            "api_key": args.api_key,
            "log_level": args.log_level,
            "model_control": args.model_control,
            "workers": args.workers,
        }.items()
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise StriateError(f"bad setting: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    if not Path(settings.model_dir).is_dir():
        raise StriateError(f"model dir {settings.model_dir} does not exist (set --model-dir or STRIATE_MODEL_DIR)")
    providers_for(settings.device)  # refuse "cuda" up front when onnxruntime has no CUDA provider
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    chosen = plan(settings)
    logging.getLogger("striate.service").info("serving with %s", chosen.describe())
    settings = settings.model_copy(update={"workers": chosen.workers, "intra_op_threads": chosen.intra_op_threads})
    with multiprocess_metrics(chosen.workers):
        return serve_one(settings) if chosen.workers == 1 else WorkerPool(settings, chosen.workers).run()
