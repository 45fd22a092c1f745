"""`POST /v1/chat/completions` and `POST /v1/completions`: one generation job each, answered whole or as SSE."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.inference import generate, generation_job
from api.schemas.chat import ChatCompletionRequest, ChatFormat
from api.schemas.completions import CompletionFormat, CompletionRequest
from api.schemas.sampling import SamplingRequest
from api.services import Services, ServicesDep
from api.streaming import Format

router = APIRouter(tags=["chat"])


async def _generate(body: SamplingRequest, make_format: Callable[[str, str, int], Format], request: Request,
                    services: Services) -> Response:
    job = await generation_job(services, body)
    fmt = make_format(job.id, body.model, job.created_ms // 1000)
    return await generate(request, services, job, fmt, body.stream, body.include_usage)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, services: ServicesDep) -> Response:
    return await _generate(body, ChatFormat, request, services)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, services: ServicesDep) -> Response:
    return await _generate(body, CompletionFormat, request, services)
