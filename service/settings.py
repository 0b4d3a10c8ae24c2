"""Service settings, from the environment (prefix `STRIATE_`); every default stated once, here."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_model_dir() -> Path:
    """The repository's `exported/` (editable install, source tree) or `./exported` (installed, Docker)."""
    beside_package = Path(__file__).resolve().parents[1] / "exported"
    return beside_package if beside_package.is_dir() else Path.cwd() / "exported"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STRIATE_", protected_namespaces=())

    model_dir: Path = Field(default_factory=_default_model_dir, description="the model repository")
    device: Literal["cpu", "cuda", "auto"] = "auto"  # CUDA when onnxruntime has it, else CPU
    max_batch_size: int = Field(32, ge=1, description="most images merged into one onnxruntime call")
    max_batch_delay_ms: float = Field(
        5.0, ge=0, description="longest wait for more requests while others are on their way"
    )
    max_queue: int = Field(256, ge=1, description="images waiting per graph before 503")
    workers: int = Field(
        0, ge=0, description="`striate serve` processes sharing the port (0: one per usable core; see parallelism.py)"
    )
    intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads per worker (0: usable cores / workers)"
    )
    inter_op_threads: int = Field(0, ge=0, description="onnxruntime inter-op threads (0: its default)")
    preprocess_threads: int = Field(4, ge=1, description="threads decoding and preprocessing images")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body")
    max_pixels: int = Field(40_000_000, ge=1, description="largest decoded image (width x height)")
    max_images: int = Field(256, ge=1, description="most images in one request")
    model_control: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="none: load at start-up only; poll: rescan every poll_interval seconds; "
        "explicit: load and unload through POST /v2/repository/...",
    )
    startup_models: str = Field(
        "*",
        description="with model_control=explicit: models loaded at start-up, comma-separated ('*': all, '': none)",
    )
    poll_interval: float = Field(5.0, gt=0, description="seconds between rescans with model_control=poll")
    drain_grace: float = Field(  # below docker compose's stop_grace_period (20 s) and Kubernetes' 30 s
        15.0, ge=0, description="seconds requests in flight get to finish (SIGTERM, unload, swap)"
    )
    max_explain_targets: int = Field(10, ge=1, description="most classes explained per image in one request")
    max_explain_passes: int = Field(  # Score-CAM at one image on the widest registered last stage (2048 channels)
        2048, ge=1, description="most forward passes one explain request may run (gradient-free methods, scores)"
    )
    api_key: str | None = Field(None, description="when set, every route but health needs it")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"


@lru_cache
def get_settings() -> Settings:
    return Settings()
