from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.responses import JSONBytes
from api.schemas.embeddings import EmbeddingRequest
from api.services import ServicesDep
from api.streaming import until_disconnected
from common.protocol import ModelType

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request, services: ServicesDep) -> Response:
    settings = services.settings
    info = await services.directory.resolve(body.model, ModelType.EMBEDDING)
    body.check_vocabulary(info.shape.vocab if info.shape else None)
    job = body.to_job(settings.max_inputs_per_request, settings.request_timeout_s)
    message = await until_disconnected(request, services.dispatcher.call(job, settings.request_timeout_s))
    if message is None:  # the caller left; the job was cancelled
        return Response(status_code=499)
    response = body.response(message.body)
    request.app.state.metrics.count_usage(response["usage"])
    return JSONBytes(response)
