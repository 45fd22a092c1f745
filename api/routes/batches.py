"""`/v1/batches`: create, retrieve, list (newest first, `after`/`limit`), cancel."""

from __future__ import annotations

from fastapi import APIRouter, Query

from api.batch_service import BatchDep
from api.responses import JSONBytes
from api.schemas.batches import CreateBatchRequest

router = APIRouter(tags=["batches"])


@router.post("/v1/batches")
async def create_batch(request: CreateBatchRequest, batches: BatchDep) -> JSONBytes:
    return JSONBytes((await batches.create(request)).to_object())


@router.get("/v1/batches")
async def list_batches(batches: BatchDep, after: str | None = None,
                       limit: int = Query(20, ge=1, le=100)) -> JSONBytes:
    states, has_more = await batches.page(after, limit)
    data = [s.to_object() for s in states]
    return JSONBytes({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                      "last_id": data[-1]["id"] if data else None, "has_more": has_more})


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, batches: BatchDep) -> JSONBytes:
    return JSONBytes((await batches.get(batch_id)).to_object())


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, batches: BatchDep) -> JSONBytes:
    return JSONBytes((await batches.cancel(batch_id)).to_object())
