"""Model metadata: the list, one model (its latest version), one version."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import ApiKey, RepositoryDep
from service.explain import explain_info
from service.repository import LoadedModel, Repository
from service.schemas import BrokenModel, LayerInfo, ModelDetail, ModelList, ModelSummary, ModelVersion

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[ApiKey])


def describe(model: LoadedModel, repository: Repository) -> ModelVersion:
    m = model.manifest
    return ModelVersion(
        name=model.name,
        version=model.version,
        latest=model.version == max(repository.models[model.name]),
        architecture=m.architecture,
        provider=model.provider,
        labels=list(m.labels),
        input=m.input.model_dump(),
        preprocessing=m.preprocessing.model_dump(),
        layers=[
            LayerInfo(name=item.name, dim=item.dim, map_shape=list(item.map_shape) if item.map_shape else None)
            for item in m.layers
        ],
        explain=explain_info(model, repository.settings),
        metrics=m.metrics,
        provenance=m.provenance.model_dump(),
    )


@router.get("/models", response_model=ModelList, summary="every model, and every bundle that failed to load")
async def list_models(repository: RepositoryDep) -> ModelList:
    summaries = []
    for name, versions in sorted(repository.models.items()):
        latest = versions[max(versions)]
        summaries.append(
            ModelSummary(
                name=name,
                versions=sorted(versions),
                latest=latest.version,
                labels=len(latest.manifest.labels),
                architecture=latest.manifest.architecture,
            )
        )
    broken = [BrokenModel(name=b.name, version=b.version, error=b.error) for b in repository.broken]
    return ModelList(models=summaries, broken=broken)


@router.get("/models/{name}", response_model=ModelDetail, summary="a model's latest version")
@router.get("/models/{name}/versions/{version}", response_model=ModelDetail, summary="one version of a model")
async def get_model(repository: RepositoryDep, name: str, version: str | None = None) -> ModelDetail:
    model = repository.get(name, version)
    return ModelDetail(**describe(model, repository).model_dump(), versions=sorted(repository.models[name]))
