from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.responses import JSONBytes
from api.services import ServicesDep
from common.discovery import ModelInfo
from common.errors import ModelNotFound

router = APIRouter(tags=["models"])

OWNER = "llm-interface"


def model_card(info: ModelInfo, state: dict[str, Any] | None = None,
               holders: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """OpenAI's model object, plus what a local user wants to know: type, state (available, loading,
    loaded, parked, unloading, failed) and its error, placement, pinned, jobs waiting and running, and which
    workers hold it (`workers`: id and state of each); for chat models the context length (the planned one
    once placed, else the config's window) and the tool-call and reasoning parsers chosen for it."""
    state = state or {"state": "available"}
    placement = state.get("placement") or {}
    chat = info.chat
    return {"id": info.id, "object": "model", "created": 0, "owned_by": OWNER, "type": str(info.type),
            "size_bytes": info.size_bytes, "dtype": info.dtype, "architecture": info.architecture,
            "max_length": info.max_length, "state": state["state"], "error": state.get("error"),
            "placement": state.get("placement"), "pinned": bool(state.get("pinned", False)),
            "waiting_jobs": int(state.get("waiting", 0)), "running_jobs": int(state.get("running", 0)),
            "loading_seconds": state.get("loading_s"), "workers": list(holders or []),
            "context_length": placement.get("max_model_len") or info.max_length,
            "tool_parser": chat.tool_parser if chat else None,
            "reasoning_parser": chat.reasoning_parser if chat else None}


@router.get("/v1/models")
async def list_models(services: ServicesDep) -> JSONBytes:
    snap = await services.directory.snapshot()
    cards = [model_card(m, snap.states.get(m.id), snap.holders.get(m.id)) for m in snap.models.values()]
    return JSONBytes({"object": "list", "data": cards})


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, services: ServicesDep) -> JSONBytes:
    snap = await services.directory.snapshot()
    info = snap.models.get(model_id)
    if info is None:
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
    return JSONBytes(model_card(info, snap.states.get(model_id), snap.holders.get(model_id)))
