"""`POST /v1/rerank`, `/v2/rerank` (Cohere v2) and `/rerank` (TEI's shape when `texts` is given)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.inference import answer
from api.responses import JSONBytes
from api.schemas.rerank import RerankRequest
from api.services import Services, ServicesDep
from common.protocol import ModelType

router = APIRouter(tags=["rerank"])


async def _rerank(body: RerankRequest, request: Request, services: Services, api_version: str,
                  tei: bool = False) -> JSONBytes:
    settings = services.settings
    model = body.model or await services.directory.default_model(ModelType.RERANKER)
    await services.directory.resolve(model, ModelType.RERANKER)
    job = body.to_job(model, settings.rerank_max_documents, settings.request_timeout_s)
    message = await answer(request, services, job)
    if tei and body.texts is not None:
        return JSONBytes(body.tei_response(message.body))
    return JSONBytes(body.response(job, message.body, api_version))


@router.post("/v1/rerank")
async def rerank_v1(body: RerankRequest, request: Request, services: ServicesDep) -> JSONBytes:
    return await _rerank(body, request, services, "1")


@router.post("/v2/rerank")
async def rerank_v2(body: RerankRequest, request: Request, services: ServicesDep) -> JSONBytes:
    return await _rerank(body, request, services, "2")


@router.post("/rerank")
async def rerank(body: RerankRequest, request: Request, services: ServicesDep) -> JSONBytes:
    return await _rerank(body, request, services, "1", tei=True)
