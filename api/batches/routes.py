"""`/v1/files` (upload streamed to disk, list, retrieve, download, delete) and `/v1/batches` (create, retrieve,
list newest first with `after`/`limit`, cancel)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from api.batches.schemas import CreateBatchRequest
from api.batches.service import BatchDep
from api.batches.uploads import receive_upload
from api.responses import JSONBytes

router = APIRouter()

UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": ["batch"]}},
}}}}}


def page(data: list[dict[str, Any]], has_more: bool) -> JSONBytes:
    """OpenAI's list envelope of a page of objects."""
    return JSONBytes({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                      "last_id": data[-1]["id"] if data else None, "has_more": has_more})


# ---- files ----

@router.post("/v1/files", openapi_extra=UPLOAD_BODY, tags=["files"])
async def upload_file(request: Request, batches: BatchDep) -> JSONBytes:
    settings = batches.settings
    meta = await receive_upload(request, batches.files, settings.batch_max_file_bytes, settings.batch_max_lines)
    return JSONBytes(meta.to_object())


@router.get("/v1/files", tags=["files"])
async def list_files(batches: BatchDep, purpose: str | None = None, after: str | None = None,
                     limit: int = Query(10_000, ge=1, le=10_000),
                     order: Literal["asc", "desc"] = "desc") -> JSONBytes:
    metas, has_more = await asyncio.to_thread(batches.files.list, purpose, after, limit, order)
    return page([m.to_object() for m in metas], has_more)


@router.get("/v1/files/{file_id}", tags=["files"])
async def retrieve_file(file_id: str, batches: BatchDep) -> JSONBytes:
    return JSONBytes(batches.files.get(file_id).to_object())


@router.get("/v1/files/{file_id}/content", tags=["files"])
async def file_content(file_id: str, batches: BatchDep) -> FileResponse:
    meta = batches.files.get(file_id)
    return FileResponse(batches.files.content_path(file_id), media_type="application/octet-stream",
                        filename=meta.filename)


@router.delete("/v1/files/{file_id}", tags=["files"])
async def delete_file(file_id: str, batches: BatchDep) -> JSONBytes:
    await asyncio.to_thread(batches.files.delete, file_id)
    return JSONBytes({"id": file_id, "object": "file", "deleted": True})


# ---- batches ----

@router.post("/v1/batches", tags=["batches"])
async def create_batch(request: CreateBatchRequest, batches: BatchDep) -> JSONBytes:
    return JSONBytes((await batches.create(request)).to_object())


@router.get("/v1/batches", tags=["batches"])
async def list_batches(batches: BatchDep, after: str | None = None,
                       limit: int = Query(20, ge=1, le=100)) -> JSONBytes:
    states, has_more = await batches.page(after, limit)
    return page([s.to_object() for s in states], has_more)


@router.get("/v1/batches/{batch_id}", tags=["batches"])
async def retrieve_batch(batch_id: str, batches: BatchDep) -> JSONBytes:
    return JSONBytes((await batches.get(batch_id)).to_object())


@router.post("/v1/batches/{batch_id}/cancel", tags=["batches"])
async def cancel_batch(batch_id: str, batches: BatchDep) -> JSONBytes:
    return JSONBytes((await batches.cancel(batch_id)).to_object())
