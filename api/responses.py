from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class JSONBytes(JSONResponse):
    """JSON rendered with orjson (large embedding responses are the hot path)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
