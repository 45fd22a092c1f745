from __future__ import annotations

from fastapi import APIRouter

from api.responses import JSONBytes
from api.schemas.embeddings import EmbeddingRequest
from api.services import ServicesDep
from common.discovery import ModelType

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings")
async def create_embeddings(request: EmbeddingRequest, services: ServicesDep) -> JSONBytes:
    settings = services.settings
    await services.directory.resolve(request.model, ModelType.EMBEDDING)
    job = request.to_job(settings.max_inputs_per_request, settings.request_timeout_s)
    message = await services.dispatcher.call(job, settings.request_timeout_s)
    return JSONBytes(request.response(message.body))
