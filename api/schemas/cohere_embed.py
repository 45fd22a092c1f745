"""Cohere's embed API, `POST /v1/embed` and `/v2/embed`, as the Cohere SDK (`Client`, `ClientV2`) and
langchain-cohere send it. The request converts itself into the `/v1/embeddings` worker job (through an
`EmbeddingRequest`) and builds Cohere's answer from the worker's float32 vectors.

Embedding types, from each float vector `v` (Cohere's own models are trained to emit them; here they are defined
for any model, per vector, so a text gets the same codes in whatever request it comes):
- `float`: v; `base64`: v's little-endian float32 bytes, base64-encoded.
- `int8`: round(v * 127 / max|v|), in [-127, 127] (symmetric scaling by the vector's largest magnitude: every
  model's range fits, and two int8 vectors have the cosine of their floats up to rounding); `uint8`: int8 + 128.
- `ubinary`: the sign bits (1 where v > 0), 8 per byte, the first dimension in the highest bit, the last byte
  padded with 0 bits (numpy's `packbits`); `binary`: ubinary - 128 (sentence-transformers' `quantize_embeddings`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictInt, StrictStr

from api.schemas.base import INT32_MAX, ApiRequest
from api.schemas.embeddings import EmbeddingRequest, encode_vector
from common.errors import InvalidRequest
from common.protocol import Job

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
InputType = Literal["search_document", "search_query", "classification", "clustering", "image"]


def to_int8(vector: list[float]) -> list[int]:
    peak = max((abs(v) for v in vector), default=0.0)
    scale = 127.0 / peak if peak > 0 else 0.0
    return [round(v * scale) for v in vector]


def to_uint8(vector: list[float]) -> list[int]:
    return [q + 128 for q in to_int8(vector)]


def to_ubinary(vector: list[float]) -> list[int]:
    packed = []
    for start in range(0, len(vector), 8):
        byte = 0
        for bit, value in enumerate(vector[start:start + 8]):
            if value > 0:
                byte |= 0x80 >> bit
        packed.append(byte)
    return packed


def to_binary(vector: list[float]) -> list[int]:
    return [b - 128 for b in to_ubinary(vector)]


def _floats(raw: bytes) -> list[float]:
    vector = encode_vector(raw, "float")
    assert isinstance(vector, list)
    return vector


_QUANTISED: dict[str, Callable[[list[float]], list[int]]] = {
    "int8": to_int8, "uint8": to_uint8, "binary": to_binary, "ubinary": to_ubinary}


def typed_embeddings(raws: list[bytes], types: list[str]) -> dict[str, list[Any]]:
    """Cohere's `embeddings` object: per requested type, one embedding per input (float32 bytes from the worker)."""
    floats = [_floats(raw) for raw in raws]
    out: dict[str, list[Any]] = {}
    for kind in types:
        if kind == "float":
            out[kind] = floats
        elif kind == "base64":
            out[kind] = [encode_vector(raw, "base64") for raw in raws]
        else:
            out[kind] = [_QUANTISED[kind](v) for v in floats]
    return out


class CohereEmbedRequest(ApiRequest):
    """One body for v1 and v2 (fields the SDKs send as null are accepted as unset)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, min_length=1)  # required by Cohere v2; unset: the only embedding model served
    texts: list[StrictStr] | None = None
    images: list[Any] | None = None  # refused: text models only
    inputs: list[Any] | None = None  # v2's mixed content; refused
    input_type: InputType | None = None  # accepted; a model here embeds queries and documents alike
    embedding_types: list[EmbeddingType] | None = None
    truncate: Literal["NONE", "START", "END"] | None = None
    max_tokens: StrictInt | None = Field(None, ge=1, le=INT32_MAX)  # v2
    output_dimension: StrictInt | None = Field(None, ge=1, le=INT32_MAX)  # v2: Matryoshka, as `dimensions`
    priority: StrictInt | None = None  # v2; accepted, every request is served in arrival order

    def _texts(self) -> list[str]:
        for param in ("images", "inputs"):
            if getattr(self, param):
                raise InvalidRequest(f"'{param}' is not supported: this server embeds 'texts' only",
                                     param=param, code="unsupported_input")
        if not self.texts:
            raise InvalidRequest("'texts' must not be empty", param="texts", code="empty_input")
        empty = [i for i, t in enumerate(self.texts) if not t]
        if empty:
            raise InvalidRequest(f"texts[{empty[0]}] is empty", param="texts", code="empty_input")
        return self.texts

    def _check_truncation(self, max_length: int | None) -> None:
        """`END` (Cohere's default) and `NONE` are the worker's rule (LLM_EMBEDDING_TRUNCATE: cut at the model's
        window, or a 400); `START` and a `max_tokens` below the window would need another cut: refused, not
        answered with vectors of other text."""
        if self.truncate == "START":
            raise InvalidRequest("truncate=START is not supported: inputs are cut at their end (END)",
                                 param="truncate", code="unsupported_truncate")
        if self.max_tokens is not None and (max_length is None or self.max_tokens < max_length):
            raise InvalidRequest(f"max_tokens below the model's window ({max_length}) is not supported",
                                 param="max_tokens", code="unsupported_max_tokens")

    def to_job(self, model: str, max_length: int | None, max_inputs: int, timeout_s: float) -> Job:
        self._check_truncation(max_length)
        texts = self._texts()
        if len(texts) > max_inputs:
            raise InvalidRequest(f"'texts' has {len(texts)} items; at most {max_inputs} are allowed",
                                 param="texts", code="too_many_inputs")
        request = EmbeddingRequest(model=model, input=texts, dimensions=self.output_dimension)
        return request.to_job(max_inputs, timeout_s)

    def response(self, job: Job, body: dict[str, Any], api_version: str) -> dict[str, Any]:
        """v1 without `embedding_types`: `embeddings_floats` (a list of float lists); else `embeddings_by_type`."""
        meta = {"api_version": {"version": api_version},
                "billed_units": {"input_tokens": int(body["prompt_tokens"])}}
        raws: list[bytes] = body["data"]
        if api_version == "1" and not self.embedding_types:
            return {"id": job.id, "response_type": "embeddings_floats", "texts": self.texts,
                    "embeddings": [_floats(raw) for raw in raws], "meta": meta}
        embeddings = typed_embeddings(raws, list(self.embedding_types or ["float"]))
        return {"id": job.id, "response_type": "embeddings_by_type", "texts": self.texts, "embeddings": embeddings,
                "meta": meta}
