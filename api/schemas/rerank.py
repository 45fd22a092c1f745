"""Rerank requests: the union of the shapes clients send (Cohere v1/v2, Jina, the seed's, TEI's).

One request model accepts every shape; it converts itself into a worker job and builds the answer
in the shape the route speaks: the Cohere/Jina union (`results` sorted by score, each with its
original `index`; `id`, `model`, `usage`, `meta`) or TEI's plain list (`[{"index", "score", "text"?}]`).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from api.schemas.base import INT32_MAX, ApiRequest
from common import keys
from common.errors import InvalidRequest
from common.protocol import Job, ModelType, new_request_id, now_ms

# Cohere bills one search unit per query and up to 100 documents.
DOCUMENTS_PER_SEARCH_UNIT = 100


class TextDocument(BaseModel):
    """Cohere v1's structured document: only `text` is read; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr


class RerankRequest(ApiRequest):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, min_length=1)  # TEI clients send none: the only reranker served
    query: StrictStr
    documents: list[StrictStr | TextDocument] | None = None
    texts: list[StrictStr] | None = None  # TEI
    top_n: StrictInt | None = Field(None, ge=0, le=INT32_MAX)  # 0 (vLLM) or above the count: every document
    top_k: StrictInt | None = Field(None, ge=0, le=INT32_MAX)  # the seed's name for top_n
    return_documents: StrictBool | None = None
    return_text: StrictBool = False  # TEI
    raw_scores: StrictBool = False  # TEI; logits instead of probabilities
    truncate: StrictBool | None = None  # TEI; false: a pair over the model's window is a 400
    max_tokens_per_doc: StrictInt | None = Field(None, ge=1, le=INT32_MAX)  # Cohere v2
    max_chunks_per_doc: StrictInt | None = None  # Cohere v1; accepted, documents are never chunked
    instruction: StrictStr | None = None  # yes/no (Qwen3-Reranker style) models' instruction

    @model_validator(mode="after")
    def _one_document_list(self) -> RerankRequest:
        if (self.documents is None) == (self.texts is None):
            raise ValueError("give 'documents' (or TEI's 'texts'), and only one of them")
        return self

    def document_texts(self) -> list[str]:
        items = self.texts if self.texts is not None else self.documents
        return [d if isinstance(d, str) else d.text for d in items or []]

    def to_job(self, model: str, max_documents: int, timeout_s: float) -> Job:
        if not self.query:
            raise InvalidRequest("'query' must not be empty", param="query", code="empty_input")
        documents = self.document_texts()
        param = "texts" if self.texts is not None else "documents"
        if not documents:
            raise InvalidRequest(f"'{param}' must not be empty", param=param, code="empty_input")
        if len(documents) > max_documents:
            raise InvalidRequest(f"'{param}' has {len(documents)} items; at most {max_documents} are allowed",
                                 param=param, code="too_many_documents")
        request_id = new_request_id("rerank")
        created = now_ms()
        payload = {"query": self.query, "documents": documents, "raw_scores": self.raw_scores,
                   "truncate": self.truncate is not False, "max_tokens_per_doc": self.max_tokens_per_doc,
                   "instruction": self.instruction}
        return Job(id=request_id, kind=str(ModelType.RERANKER), model=model,
                   reply_to=keys.result_stream(request_id), payload=payload, created_ms=created,
                   deadline_ms=created + int(timeout_s * 1000))

    def ranking(self, scores: list[float]) -> list[int]:
        """Document indices by score, highest first (ties keep input order), cut to top_n/top_k."""
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        top = self.top_n if self.top_n is not None else self.top_k
        return order[:top] if top else order

    def response(self, job: Job, body: dict[str, Any], api_version: str) -> dict[str, Any]:
        """The Cohere (v1 or v2) / Jina / seed union."""
        scores = [float(s) for s in body["scores"]]
        documents = self.document_texts()
        with_docs = self.return_documents if self.return_documents is not None else api_version == "1"
        results = []
        for i in self.ranking(scores):
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if with_docs:
                item["document"] = {"text": documents[i]}
            results.append(item)
        tokens = int(body["prompt_tokens"])
        units = math.ceil(len(documents) / DOCUMENTS_PER_SEARCH_UNIT)
        return {"id": job.id, "model": job.model, "results": results,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "meta": {"api_version": {"version": api_version}, "billed_units": {"search_units": units}}}

    def tei_response(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """TEI's `/rerank` answer: `[{"index", "score", "text"?}]`, highest score first."""
        scores = [float(s) for s in body["scores"]]
        documents = self.document_texts()
        out = []
        for i in self.ranking(scores):
            item: dict[str, Any] = {"index": i, "score": scores[i]}
            if self.return_text:
                item["text"] = documents[i]
            out.append(item)
        return out
