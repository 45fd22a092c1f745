"""Fields shared by /v1/chat/completions and /v1/completions, with OpenAI's meanings and ranges.

Unknown parameters are refused with a 400 naming them (never silently ignored), except those that
only concern OpenAI's own storage or billing and a few explicit nulls clients like to send.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from api.schemas.base import INT32_MAX, SEED_MAX, SEED_MIN, ApiRequest
from common import keys
from common.errors import InvalidRequest
from common.protocol import Job, ModelType, new_request_id, now_ms

MAX_STOP_SEQUENCES = 16
IGNORED_PARAMETERS = frozenset({"store", "metadata", "service_tier", "stream_options"})


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class SamplingRequest(ApiRequest):
    model_config = ConfigDict(extra="allow")
    id_prefix: ClassVar[str] = "cmpl"

    model: StrictStr = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: StrictInt | None = Field(None, ge=1, le=INT32_MAX)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    n: StrictInt = Field(1, ge=1, le=INT32_MAX)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def check(self, max_n: int) -> None:
        """Semantic checks pydantic cannot express; 400 naming the parameter."""
        for name, value in (self.model_extra or {}).items():
            if value is not None and name not in IGNORED_PARAMETERS:
                raise InvalidRequest(f"Unsupported parameter: '{name}'", param=name, code="unsupported_parameter")
        if self.n > max_n:
            raise InvalidRequest(f"n={self.n} is more than the allowed {max_n}", param="n", code="n_too_large")
        stops = self.stop_list()
        if len(stops) > MAX_STOP_SEQUENCES or any(not s for s in stops):
            raise InvalidRequest(f"'stop' takes 1 to {MAX_STOP_SEQUENCES} non-empty strings", param="stop")

    def check_vocabulary(self, vocab_size: int | None) -> None:
        """Token ids in the request must be ids of the model's vocabulary (see the subclasses)."""

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def token_limit(self) -> int | None:
        return self.max_tokens

    def logprobs_k(self) -> int | None:
        return None

    def json_mode(self) -> dict[str, Any] | None:
        return None

    def prompts(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        if top_p == 0.0:  # only the most likely token can be drawn: greedy
            temperature, top_p = 0.0, 1.0
        return {"temperature": temperature, "top_p": top_p, "stop": self.stop_list(), "seed": self.seed,
                "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                "logprobs": self.logprobs_k(), "json": self.json_mode()}

    def to_job(self, timeout_s: float) -> Job:
        request_id = new_request_id(self.id_prefix)
        created = now_ms()
        payload = {"prompts": self.prompts(), "n": self.n, "max_tokens": self.token_limit(),
                   "params": self.params()}
        return Job(id=request_id, kind=str(ModelType.CHAT), model=self.model,
                   reply_to=keys.result_stream(request_id), payload=payload,
                   created_ms=created, deadline_ms=created + int(timeout_s * 1000))
