"""`/v1/responses` (OpenAI's Responses API) on the chat engines: create (whole or streamed), retrieve, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.doors.responses import ResponsesRequest
from api.doors.responses_output import ResponsesDoor
from api.doors.responses_store import ResponseStore
from api.inference import generate_door, generation_job
from api.services import Services, ServicesDep

router = APIRouter(tags=["responses"])


def _store(services: Services) -> ResponseStore:
    return ResponseStore(services.redis, services.settings.responses_ttl_s)


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request, services: ServicesDep) -> Response:
    body.check()
    store = _store(services)
    conversation = body.conversation(await store.history(body.previous_response_id))
    job = await generation_job(services, body.to_chat(conversation))
    door = ResponsesDoor(body, "resp_" + job.id.partition("-")[2], store, conversation)
    return await generate_door(request, services, job, door, body.stream)


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, services: ServicesDep) -> dict[str, Any]:
    return await _store(services).get(response_id)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, services: ServicesDep) -> dict[str, Any]:
    await _store(services).delete(response_id)
    return {"id": response_id, "object": "response", "deleted": True}
