"""Model metadata: the list, one model (its latest version), one version."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import ApiKey, ModelDep, RepositoryDep
from service.explain import explain_info
from service.repository import LoadedModel, Repository
from service.routes.common import error_responses, model_route
from service.routes.figures import figures_of, report_url
from service.schemas import BrokenModel, LayerInfo, ModelDetail, ModelList, ModelSummary, ModelVersion

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[ApiKey], responses=error_responses(401))


def describe(model: LoadedModel, repository: Repository) -> ModelVersion:
    m = model.manifest
    return ModelVersion(
        name=model.name,
        version=model.version,
        latest=model.version == max(repository.served_versions(model.name), default=model.version),
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
        figures=figures_of(model),
        report=report_url(model) if m.report is not None else None,
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


@model_route(
    router, "get", "", response_model=ModelDetail, summary="a model's metadata", responses=error_responses(404)
)
async def get_model(repository: RepositoryDep, model: ModelDep) -> ModelDetail:
    versions = repository.served_versions(model.name) or [model.version]
    return ModelDetail(**describe(model, repository).model_dump(), versions=versions)
