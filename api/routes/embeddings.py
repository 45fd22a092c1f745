"""`POST /v1/embeddings` (OpenAI) and `/v1/embed`, `/v2/embed` (Cohere): one job each; the vectors come back as
float32 bytes and leave as floats, base64 or Cohere's quantised types."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api import token_ids
from api.inference import answer
from api.responses import JSONBytes
from api.schemas.cohere_embed import CohereEmbedRequest
from api.schemas.embeddings import EmbeddingRequest
from api.services import Services, ServicesDep
from common.protocol import ModelType

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request, services: ServicesDep) -> JSONBytes:
    settings = services.settings
    info = await services.directory.resolve(body.model, ModelType.EMBEDDING)
    read_ids = token_ids.reader(settings.embedding_token_ids)
    if read_ids is None:  # ids of the model's own vocabulary
        body.check_vocabulary(info.shape.vocab if info.shape else None)
    job = body.to_job(settings.max_inputs_per_request, settings.request_timeout_s, read_ids)
    message = await answer(request, services, job)
    return JSONBytes(body.response(message.body))


async def _cohere_embed(body: CohereEmbedRequest, request: Request, services: Services,
                        api_version: str) -> JSONBytes:
    settings = services.settings
    model = body.model or await services.directory.default_model(ModelType.EMBEDDING)
    info = await services.directory.resolve(model, ModelType.EMBEDDING)
    job = body.to_job(model, info.max_length, settings.max_inputs_per_request, settings.request_timeout_s)
    message = await answer(request, services, job)
    return JSONBytes(body.response(job, message.body, api_version))


@router.post("/v1/embed")
async def cohere_embed_v1(body: CohereEmbedRequest, request: Request, services: ServicesDep) -> JSONBytes:
    return await _cohere_embed(body, request, services, "1")


@router.post("/v2/embed")
async def cohere_embed_v2(body: CohereEmbedRequest, request: Request, services: ServicesDep) -> JSONBytes:
    return await _cohere_embed(body, request, services, "2")
