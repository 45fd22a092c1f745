"""`POST /v1/files`: parse the multipart body as it arrives and write the `file` part straight to disk.

The body is never held whole: each received chunk goes through python-multipart's push parser, the
file part's bytes are appended to a temporary file (counted against the size and line limits, 413 as
soon as one is passed), and the finished file is moved into the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import IO, Any

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from api.batches.files import FileMeta, FileStore
from common.errors import InvalidRequest, PayloadTooLarge

MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries around the file's own bytes
MAX_FIELD_BYTES = 1024  # `purpose` and any other small form field


class _Form:
    """Callbacks of the push parser: the `file` part to a sink, small fields to memory."""

    def __init__(self, sink: IO[bytes], max_bytes: int, max_lines: int) -> None:
        self.sink = sink
        self.max_bytes = max_bytes
        self.max_lines = max_lines
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.newlines = 0
        self.last_byte = b"\n"
        self.pending: list[bytes] = []  # file bytes parsed from the latest chunk, not yet written
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part: str | None = None
        self._is_file = False
        self._value = bytearray()

    def callbacks(self) -> Any:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_val, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done, "on_part_data": self._data, "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self._part, self._is_file, self._value = {}, None, False, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name, self._header_value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part = options.get(b"name", b"").decode("utf-8", "replace")
        self._is_file = self._part == "file"
        if self._is_file:
            if self.filename is not None:
                raise InvalidRequest("give exactly one 'file' part", param="file")
            self.filename = options.get(b"filename", b"upload.jsonl").decode("utf-8", "replace") or "upload.jsonl"

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if not self._is_file:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"form field '{self._part}' is too long", param=self._part)
            return
        if not chunk:
            return
        self.size += len(chunk)
        self.newlines += chunk.count(b"\n")
        self.last_byte = chunk[-1:]
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"the file is larger than {self.max_bytes} bytes", param="file")
        if self.lines > self.max_lines:
            raise PayloadTooLarge(f"the file has more than {self.max_lines} lines", param="file",
                                  code="too_many_lines")
        self.pending.append(chunk)

    def _end(self) -> None:
        if self._part and not self._is_file:
            self.fields[self._part] = self._value.decode("utf-8", "replace")

    @property
    def lines(self) -> int:
        return self.newlines + (self.last_byte != b"\n")


def _boundary(request: Request) -> bytes:
    ctype, options = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data" or not options.get(b"boundary"):
        raise InvalidRequest("send the file as multipart/form-data with fields 'file' and 'purpose'",
                             code="invalid_content_type")
    return options[b"boundary"]


def _check_declared_size(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"the file is larger than {max_bytes} bytes", param="file")


async def receive_upload(request: Request, store: FileStore, max_bytes: int, max_lines: int) -> FileMeta:
    """Stream a multipart upload into the store; 400 for a wrong purpose or no file, 413 past a limit."""
    boundary = _boundary(request)
    _check_declared_size(request, max_bytes)
    path = store.temp_path()
    try:
        with path.open("wb") as sink:
            form = await _parse(request, boundary, sink, max_bytes, max_lines)
        return await asyncio.to_thread(_store, store, path, form)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _parse(request: Request, boundary: bytes, sink: IO[bytes], max_bytes: int, max_lines: int) -> _Form:
    form = _Form(sink, max_bytes, max_lines)
    parser = MultipartParser(boundary, form.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if form.pending:
                data, form.pending = b"".join(form.pending), []
                await asyncio.to_thread(sink.write, data)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from exc
    except ClientDisconnect as exc:
        raise InvalidRequest("the upload was interrupted", code="upload_interrupted") from exc
    await asyncio.to_thread(_sync, sink)
    return form


def _sync(sink: IO[bytes]) -> None:
    sink.flush()
    os.fsync(sink.fileno())


def _store(store: FileStore, path: Path, form: _Form) -> FileMeta:
    purpose = form.fields.get("purpose")
    if purpose != "batch":
        raise InvalidRequest(f"'purpose' must be 'batch' (got {purpose!r})", param="purpose", code="invalid_purpose")
    if form.filename is None:
        raise InvalidRequest("the 'file' part is missing", param="file", code="missing_file")
    if form.size == 0:
        raise InvalidRequest("the file is empty", param="file", code="empty_file")
    return store.save(path, form.filename, purpose, form.lines)
