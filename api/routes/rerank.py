"""`POST /v1/rerank`, `/v2/rerank` (Cohere v2) and `/rerank` (TEI's shape when `texts` is given)."""

from __future__ import annotations

from fastapi import APIRouter

from api.responses import JSONBytes
from api.schemas.rerank import RerankRequest
from api.services import Services, ServicesDep
from common.protocol import ModelType

router = APIRouter(tags=["rerank"])

PATHS = ("/v1/rerank", "/v2/rerank", "/rerank")


async def _rerank(request: RerankRequest, services: Services, api_version: str, tei: bool = False) -> JSONBytes:
    settings = services.settings
    model = request.model or await services.directory.default_model(ModelType.RERANKER)
    await services.directory.resolve(model, ModelType.RERANKER)
    job = request.to_job(model, settings.rerank_max_documents, settings.request_timeout_s)
    message = await services.dispatcher.call(job, settings.request_timeout_s)
    if tei and request.texts is not None:
        return JSONBytes(request.tei_response(message.body))
    return JSONBytes(request.response(job, message.body, api_version))


@router.post("/v1/rerank")
async def rerank_v1(request: RerankRequest, services: ServicesDep) -> JSONBytes:
    return await _rerank(request, services, "1")


@router.post("/v2/rerank")
async def rerank_v2(request: RerankRequest, services: ServicesDep) -> JSONBytes:
    return await _rerank(request, services, "2")


@router.post("/rerank")
async def rerank(request: RerankRequest, services: ServicesDep) -> JSONBytes:
    return await _rerank(request, services, "1", tei=True)
