"""`POST /v1/embeddings`: one job; the vectors come back as float32 bytes and leave as floats or base64."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.inference import answer
from api.responses import JSONBytes
from api.schemas.embeddings import EmbeddingRequest
from api.services import ServicesDep
from common.protocol import ModelType

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request, services: ServicesDep) -> JSONBytes:
    settings = services.settings
    info = await services.directory.resolve(body.model, ModelType.EMBEDDING)
    body.check_vocabulary(info.shape.vocab if info.shape else None)
    job = body.to_job(settings.max_inputs_per_request, settings.request_timeout_s)
    message = await answer(request, services, job)
    return JSONBytes(body.response(message.body))
