"""Fields shared by /v1/chat/completions and /v1/completions, with OpenAI's meanings and ranges.

Unknown parameters are refused with a 400 naming them (never silently ignored), except those that
only concern OpenAI's own storage or billing and a few explicit nulls clients like to send.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from api.schemas.base import INT32_MAX, SEED_MAX, SEED_MIN, ApiRequest, check_token_ids
from common import keys
from common.discovery import ModelInfo
from common.errors import InvalidRequest
from common.protocol import Job, ModelType, new_request_id, now_ms

MAX_STOP_SEQUENCES = 16
MAX_LOGIT_BIAS = 1024
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
    logit_bias: dict[str, float] | None = None  # OpenAI's: token id -> bias added to its logit, -100 to 100
    # vLLM's sampling extras, with vLLM's meanings.
    top_k: StrictInt | None = Field(None, ge=-1, le=INT32_MAX)  # 0 or -1: off
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    min_tokens: StrictInt = Field(0, ge=0, le=INT32_MAX)
    ignore_eos: StrictBool = False
    stop_token_ids: list[Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]] | None = Field(None, max_length=256)
    skip_special_tokens: StrictBool = True

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
        limit = self.token_limit()
        if limit is not None and self.min_tokens > limit:
            raise InvalidRequest(f"min_tokens={self.min_tokens} is more than the {limit} tokens asked for at most",
                                 param="min_tokens")
        self._logit_bias()

    def _logit_bias(self) -> dict[int, float]:
        bias: dict[int, float] = {}
        for key, value in (self.logit_bias or {}).items():
            if not key.isdigit() or int(key) > INT32_MAX:
                raise InvalidRequest(f"logit_bias keys are token ids; '{key}' is not one", param="logit_bias")
            if not -100.0 <= value <= 100.0:
                raise InvalidRequest(f"logit_bias[{key}] = {value} is outside [-100, 100]", param="logit_bias")
            bias[int(key)] = value
        if len(bias) > MAX_LOGIT_BIAS:
            raise InvalidRequest(f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens", param="logit_bias")
        return bias

    def check_vocabulary(self, vocab_size: int | None) -> None:
        """Token ids in the request must be ids of the model's vocabulary."""
        check_token_ids([list(self._logit_bias())], vocab_size, "logit_bias")
        check_token_ids([self.stop_token_ids or []], vocab_size, "stop_token_ids")

    def check_model(self, info: ModelInfo) -> None:
        """What the model itself must support for this request (see the chat request)."""

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
                "logprobs": self.logprobs_k(), "json": self.json_mode(), "top_k": self.top_k, "min_p": self.min_p,
                "repetition_penalty": self.repetition_penalty, "min_tokens": self.min_tokens,
                "ignore_eos": self.ignore_eos, "stop_token_ids": self.stop_token_ids or [],
                "skip_special_tokens": self.skip_special_tokens,
                "logit_bias": {str(k): v for k, v in self._logit_bias().items()}}

    def chat_options(self) -> dict[str, Any]:
        """Tools, template arguments and reasoning (chat only)."""
        return {}

    def to_job(self, timeout_s: float) -> Job:
        request_id = new_request_id(self.id_prefix)
        created = now_ms()
        payload = {"prompts": self.prompts(), "n": self.n, "max_tokens": self.token_limit(),
                   "params": self.params(), "chat": self.chat_options()}
        return Job(id=request_id, kind=str(ModelType.CHAT), model=self.model,
                   reply_to=keys.result_stream(request_id), payload=payload,
                   created_ms=created, deadline_ms=created + int(timeout_s * 1000))
