"""`POST /v1/embeddings`, as OpenAI defines it; the request converts itself into a worker job."""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictInt, StrictStr

from api.schemas.base import INT32_MAX, ApiRequest, check_token_ids
from api.token_ids import TokenReader
from common import keys
from common.errors import InvalidRequest
from common.protocol import Job, ModelType, new_request_id, now_ms

TokenId = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]
EmbeddingInput = StrictStr | list[StrictStr] | list[TokenId] | list[list[TokenId]]


def encode_vector(raw: bytes, encoding_format: str) -> list[float] | str:
    """Little-endian float32 bytes from the worker -> base64 text (as is) or a list of floats."""
    if encoding_format == "base64":
        return base64.b64encode(raw).decode("ascii")
    values = array("f")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


class EmbeddingRequest(ApiRequest):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1, le=INT32_MAX)
    user: str | None = None

    def inputs(self, max_inputs: int, read_ids: TokenReader | None = None) -> list[str] | list[list[int]]:
        """The input as a list of texts or of token lists, with OpenAI's emptiness rules; token lists become texts
        when a `read_ids` is given (see api/token_ids.py)."""
        raw = self.input
        items: list[Any] = [raw] if isinstance(raw, str) else list(raw)
        if items and isinstance(items[0], int):
            items = [items]  # one pre-tokenised input
        if not items:
            raise InvalidRequest("'input' must not be empty", param="input", code="empty_input")
        if len(items) > max_inputs:
            raise InvalidRequest(f"'input' has {len(items)} items; at most {max_inputs} are allowed",
                                 param="input", code="too_many_inputs")
        empty = [i for i, x in enumerate(items) if len(x) == 0]
        if empty:
            raise InvalidRequest(f"input[{empty[0]}] is empty", param="input", code="empty_input")
        if read_ids is not None and isinstance(items[0], list):
            return read_ids(items, "input")
        return items

    def check_vocabulary(self, vocab_size: int | None) -> None:
        """Token-id inputs must be ids of the model's vocabulary."""
        if not isinstance(self.input, str) and self.input and not isinstance(self.input[0], str):
            items = [self.input] if isinstance(self.input[0], int) else self.input
            check_token_ids(items, vocab_size, "input")

    def to_job(self, max_inputs: int, timeout_s: float, read_ids: TokenReader | None = None) -> Job:
        request_id = new_request_id("emb")
        created = now_ms()
        return Job(
            id=request_id, kind=str(ModelType.EMBEDDING), model=self.model,
            reply_to=keys.result_stream(request_id),
            payload={"input": self.inputs(max_inputs, read_ids), "dimensions": self.dimensions},
            created_ms=created, deadline_ms=created + int(timeout_s * 1000),
        )

    def response(self, body: dict[str, Any]) -> dict[str, Any]:
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(raw, self.encoding_format)}
            for i, raw in enumerate(body["data"])
        ]
        tokens = int(body["prompt_tokens"])
        return {"object": "list", "data": data, "model": self.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
