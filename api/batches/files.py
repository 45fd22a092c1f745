"""Files of the Batch API on disk under `LLM_DATA_DIR/files`: `{id}.jsonl` (the content) and `{id}.json`
(its metadata, written last and atomically: a file without one does not exist).

Content is written and read as streams (uploads in chunks, downloads with a file response); nothing
holds a whole file in memory. File ids are checked against one pattern before they reach a path.
The directory may be shared by several API replicas (a volume in compose).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from common.errors import InvalidRequest, NotFound

FILE_ID = re.compile(r"file-[0-9a-f]{32}")


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def derived_file_id(name: str) -> str:
    """A stable id for a file the service creates (a batch's output): the same name, the same id."""
    return f"file-{uuid.uuid5(uuid.NAMESPACE_URL, name).hex}"


@dataclass(frozen=True)
class FileMeta:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    lines: int

    def to_object(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}


class FileStore:
    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "files"
        self.tmp_dir = data_dir / "tmp"

    def _folders(self) -> None:
        """Made on first write, not at start: an API that never sees a file leaves no folders behind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def temp_path(self) -> Path:
        self._folders()
        return self.tmp_dir / f"upload-{uuid.uuid4().hex}.part"

    def content_path(self, file_id: str) -> Path:
        """The content of an existing file (404 for an unknown or malformed id)."""
        self.get(file_id)
        return self.dir / f"{file_id}.jsonl"

    def get(self, file_id: str) -> FileMeta:
        if not FILE_ID.fullmatch(file_id):
            raise NotFound(f"No such file: '{file_id}'", param="file_id", code="file_not_found")
        try:
            raw = (self.dir / f"{file_id}.json").read_bytes()
        except FileNotFoundError:
            raise NotFound(f"No such file: '{file_id}'", param="file_id", code="file_not_found") from None
        return FileMeta(**orjson.loads(raw))

    def list(self, purpose: str | None, after: str | None, limit: int, order: str) -> tuple[list[FileMeta], bool]:
        metas = []
        for path in self.dir.glob("file-*.json"):
            try:
                meta = FileMeta(**orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError, TypeError):
                continue  # deleted while we listed, or being written
            if purpose is None or meta.purpose == purpose:
                metas.append(meta)
        metas.sort(key=lambda m: (m.created_at, m.id), reverse=order == "desc")
        if after is not None:
            ids = [m.id for m in metas]
            if after not in ids:
                raise InvalidRequest(f"'after' names no listed file: '{after}'", param="after")
            metas = metas[ids.index(after) + 1:]
        return metas[:limit], len(metas) > limit

    def delete(self, file_id: str) -> None:
        self.get(file_id)
        (self.dir / f"{file_id}.json").unlink(missing_ok=True)  # metadata first: the file is gone at once
        (self.dir / f"{file_id}.jsonl").unlink(missing_ok=True)

    def save(self, source: Path, filename: str, purpose: str, lines: int, file_id: str | None = None) -> FileMeta:
        """Move `source` into the store as a new file (blocking; the caller runs it in a thread)."""
        file_id = file_id or new_file_id()
        content = self.dir / f"{file_id}.jsonl"
        os.replace(source, content)
        meta = FileMeta(file_id, content.stat().st_size, int(time.time()), filename, purpose, lines)
        self._write_meta(meta)
        return meta

    def adopt(self, source: Path, file_id: str, filename: str, purpose: str, lines: int) -> FileMeta:
        """Publish a finished file the service wrote (a batch's output); doing it again changes nothing."""
        try:
            return self.get(file_id)
        except NotFound:
            pass
        self._folders()
        content = self.dir / f"{file_id}.jsonl"
        if not content.exists():
            _link_or_copy(source, content)
        meta = FileMeta(file_id, content.stat().st_size, int(time.time()), filename, purpose, lines)
        self._write_meta(meta)
        return meta

    def link_into(self, file_id: str, target: Path) -> None:
        """Give a batch its own name for an input file, so deleting the file later does not break it."""
        source = self.content_path(file_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            _link_or_copy(source, target)

    def _write_meta(self, meta: FileMeta) -> None:
        self._folders()
        tmp = self.tmp_dir / f"{meta.id}.{uuid.uuid4().hex}.json"
        tmp.write_bytes(orjson.dumps(asdict(meta)))
        os.replace(tmp, self.dir / f"{meta.id}.json")


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no copy, same volume), else a streamed copy; the target appears complete or not at all."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
