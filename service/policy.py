"""Which versions of a model to serve: `<model_dir>/<name>/config.json`, Triton's `version_policy`.

    {"version_policy": {"all": {}}}                        every version (the default, no file needed)
    {"version_policy": {"latest": {"num_versions": 2}}}    the two highest versions
    {"version_policy": {"specific": {"versions": [1, 3]}}} exactly these

Exactly one of the three keys. Versions the policy leaves out are not loaded; the index lists them
as UNAVAILABLE with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_FILE = "config.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latest(_Strict):
    num_versions: int = Field(1, ge=1)


class Specific(_Strict):
    versions: tuple[int, ...] = Field(min_length=1)


class VersionPolicy(_Strict):
    all: dict | None = None
    latest: Latest | None = None
    specific: Specific | None = None

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        given = [key for key in ("all", "latest", "specific") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of all, latest, specific (got {given or 'none'})")
        return self

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve, out of those present."""
        ordered = sorted(versions)
        if self.latest is not None:
            return ordered[-self.latest.num_versions :]
        if self.specific is not None:
            return [v for v in ordered if v in self.specific.versions]
        return ordered

    def describe(self) -> str:
        if self.latest is not None:
            return f"latest {self.latest.num_versions}"
        if self.specific is not None:
            return f"specific {list(self.specific.versions)}"
        return "all"


class ModelConfig(_Strict):
    version_policy: VersionPolicy = VersionPolicy(all={})


def load_config(model_dir: Path) -> ModelConfig:
    """The model's config.json (defaults when absent); `ValueError` naming the problem when invalid."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return ModelConfig()
    try:
        return ModelConfig.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ValidationError):
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{CONFIG_FILE}: {problems}") from None
        raise ValueError(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
