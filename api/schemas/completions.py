"""`POST /v1/completions` (the legacy prompt API) on the chat models' engine."""

from __future__ import annotations

from itertools import accumulate
from typing import Annotated, Any, ClassVar

from pydantic import Field, StrictBool, StrictInt, StrictStr

from api.deltas import Choice
from api.schemas.base import INT32_MAX, check_token_ids
from api.schemas.sampling import SamplingRequest
from common.errors import InvalidRequest

TokenId = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]
PromptInput = StrictStr | list[StrictStr] | list[TokenId] | list[list[TokenId]]
LEGACY_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


class CompletionRequest(SamplingRequest):
    id_prefix: ClassVar[str] = "cmpl"

    prompt: PromptInput
    logprobs: StrictInt | None = Field(None, ge=0, le=5)
    echo: StrictBool = False
    suffix: StrictStr | None = None
    best_of: StrictInt | None = Field(None, ge=1, le=INT32_MAX)

    def check(self, max_n: int) -> None:
        super().check(max_n)
        if self.echo:
            raise InvalidRequest("'echo' is not supported", param="echo", code="unsupported_parameter")
        if self.suffix:
            raise InvalidRequest("'suffix' is not supported", param="suffix", code="unsupported_parameter")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest("'best_of' other than n is not supported", param="best_of",
                                 code="unsupported_parameter")
        if not self._prompt_list() or any(len(p) == 0 for p in self._prompt_list()):
            raise InvalidRequest("'prompt' must not be empty", param="prompt", code="empty_prompt")

    def _prompt_list(self) -> list[Any]:
        raw = self.prompt
        if isinstance(raw, str):
            return [raw]
        if raw and isinstance(raw[0], int):
            return [raw]
        return list(raw)

    def check_vocabulary(self, vocab_size: int | None) -> None:
        """Token-id prompts must be ids of the model's vocabulary."""
        super().check_vocabulary(vocab_size)
        check_token_ids([p for p in self._prompt_list() if isinstance(p, list)], vocab_size, "prompt")

    def prompts(self) -> list[dict[str, Any]]:
        return [{"prompt": p} for p in self._prompt_list()]

    def token_limit(self) -> int | None:
        return self.max_tokens or LEGACY_DEFAULT_MAX_TOKENS

    def logprobs_k(self) -> int | None:
        return self.logprobs


def legacy_logprobs(items: list[dict[str, Any]] | None, offset: int = 0) -> dict[str, Any] | None:
    if items is None:
        return None
    tokens = [i["token"] for i in items]
    offsets = [offset + o for o in accumulate([0, *map(len, tokens[:-1])])] if tokens else []
    return {"tokens": tokens, "token_logprobs": [i["logprob"] for i in items],
            "top_logprobs": [dict((t, lp) for t, lp in i["top"]) for i in items], "text_offset": offsets}


class CompletionFormat:
    def __init__(self, request_id: str, model: str, created: int) -> None:
        self.base = {"id": request_id, "object": "text_completion", "created": created, "model": model,
                     "system_fingerprint": None}
        self._offsets: dict[int, int] = {}

    def chunk(self, choice: dict[str, Any], first: bool) -> list[dict[str, Any]]:
        offset = self._offsets.get(choice["index"], 0)
        self._offsets[choice["index"]] = offset + len(choice["text"])
        body = {"index": choice["index"], "text": choice["text"],
                "logprobs": legacy_logprobs(choice["logprobs"], offset), "finish_reason": choice["finish_reason"]}
        return [{**self.base, "choices": [body]}]

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self.base, "choices": [], "usage": usage}

    def response(self, choices: list[Choice], usage: dict[str, Any]) -> dict[str, Any]:
        body = [{"index": c.index, "text": c.text, "logprobs": legacy_logprobs(c.logprobs),
                 "finish_reason": c.finish_reason} for c in choices]
        return {**self.base, "choices": body, "usage": usage}
