"""`POST /v1/messages` (Anthropic's Messages API) on the chat engines, whole or streamed; errors in Anthropic's
envelope (api/errors.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.doors.anthropic import MessagesRequest
from api.doors.anthropic_output import MessagesDoor
from api.inference import generate_door, generation_job
from api.services import ServicesDep
from common.protocol import ModelType

router = APIRouter(tags=["anthropic"])


@router.post("/v1/messages")
async def create_message(body: MessagesRequest, request: Request, services: ServicesDep) -> Response:
    body.check()
    info = await services.directory.resolve(body.model, ModelType.CHAT)
    job = await generation_job(services, body.to_chat(info))
    door = MessagesDoor(body, "msg_" + job.id.partition("-")[2])
    return await generate_door(request, services, job, door, body.stream)
