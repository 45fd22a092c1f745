"""`/v1/files`: upload (multipart, streamed to disk), list, retrieve, download, delete."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from api.batch_service import BatchDep
from api.responses import JSONBytes
from api.uploads import receive_upload

router = APIRouter(tags=["files"])

UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": ["batch"]}},
}}}}}


@router.post("/v1/files", openapi_extra=UPLOAD_BODY)
async def upload_file(request: Request, batches: BatchDep) -> JSONBytes:
    settings = batches.settings
    meta = await receive_upload(request, batches.files, settings.batch_max_file_bytes, settings.batch_max_lines)
    return JSONBytes(meta.to_object())


@router.get("/v1/files")
async def list_files(batches: BatchDep, purpose: str | None = None, after: str | None = None,
                     limit: int = Query(10_000, ge=1, le=10_000),
                     order: Literal["asc", "desc"] = "desc") -> JSONBytes:
    metas, has_more = await asyncio.to_thread(batches.files.list, purpose, after, limit, order)
    data = [m.to_object() for m in metas]
    return JSONBytes({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                      "last_id": data[-1]["id"] if data else None, "has_more": has_more})


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, batches: BatchDep) -> JSONBytes:
    return JSONBytes(batches.files.get(file_id).to_object())


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, batches: BatchDep) -> FileResponse:
    meta = batches.files.get(file_id)
    return FileResponse(batches.files.content_path(file_id), media_type="application/octet-stream",
                        filename=meta.filename)


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, batches: BatchDep) -> JSONBytes:
    await asyncio.to_thread(batches.files.delete, file_id)
    return JSONBytes({"id": file_id, "object": "file", "deleted": True})
