"""`POST /v1/chat/completions` and `POST /v1/completions`: one generation job each, answered whole or as SSE."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.inference import generate
from api.schemas.chat import ChatCompletionRequest, ChatFormat
from api.schemas.completions import CompletionFormat, CompletionRequest
from api.schemas.sampling import SamplingRequest
from api.services import Services, ServicesDep
from api.streaming import Format
from common.protocol import ModelType

router = APIRouter(tags=["chat"])


async def _generate(body: SamplingRequest, make_format: Callable[[str, str, int], Format], request: Request,
                    services: Services) -> Response:
    settings = services.settings
    body.check(settings.chat_max_n)
    info = await services.directory.resolve(body.model, ModelType.CHAT)
    body.check_vocabulary(info.shape.vocab if info.shape else None)
    job = body.to_job(settings.request_timeout_s)
    fmt = make_format(job.id, body.model, job.created_ms // 1000)
    return await generate(request, services, job, fmt, body.stream, body.include_usage)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, services: ServicesDep) -> Response:
    return await _generate(body, ChatFormat, request, services)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, services: ServicesDep) -> Response:
    return await _generate(body, CompletionFormat, request, services)
