"""The OpenAI chat- and text-completions wire format, as pydantic models: what the ingress accepts and returns.

Only what sysaware serves is modelled (text chat, text prompts, one choice per prompt); fields a real client may send
but we do not act on (``stop``, ``user``, ``top_p``, ...) are accepted and ignored, as vLLM does, so the official
``openai`` client works unchanged. vLLM's own sampling extras that load generators rely on (``ignore_eos``,
``min_tokens``, ``stream_options.continuous_usage_stats``) are honoured. sysaware's own per-request fields
(``priority``, ``request_id``) are optional extras a client passes with ``extra_body``; real vLLM ignores (or, for
``priority``, honours) them, so one request works against both.

Validation happens here, at the HTTP edge, with messages that name the field; limits that depend on the model
(context length) are checked by the ingress, which knows the pool.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sysaware.engines.types import ChatMessage, FinishReason, GenerationRequest, GenerationResult

# No served model has a longer context than this; a larger max_tokens is a client bug, not a request to cap.
MAX_TOKENS_CEILING = 1 << 20  # tokens
ALLOWED_ROLES = ("system", "user", "assistant")


class _Lenient(BaseModel):
    # Unknown fields are ignored, like vLLM's OpenAI server: clients send many knobs we have no use for.
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    """One part of a multi-part message content; only text parts are served."""

    type: Literal["text"] = Field(description="Only 'text' parts are supported.")
    text: str


class ChatMessageIn(_Lenient):
    role: Literal["system", "user", "assistant"] = Field(description="Who speaks: system, user or assistant.")
    content: str | list[TextPart] = Field(description="The text, or a list of text parts that are concatenated.")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = Field(default=False, description="Send a last chunk with the usage and no choices.")
    continuous_usage_stats: bool = Field(
        default=False,
        description="vLLM's: with include_usage, every chunk also carries the usage so far (output tokens so far).",
    )


class GenerationParams(_Lenient):
    """What chat and text completions share: the model, the output cap, sampling and streaming, vLLM's extras."""

    model: str = Field(description="Served model name; picks the deployment.")
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING, description="Output cap, tokens.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="Accepted; the twin is seeded.")
    seed: int | None = Field(default=None, description="Same seed, same messages -> same answer.")
    stream: bool = Field(default=False, description="Server-sent events, ending with 'data: [DONE]'.")
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, description="Number of choices; only 1 is served.")
    stop: str | list[str] | None = Field(default=None, description="Accepted and ignored.")
    user: str | None = Field(default=None, description="Accepted and ignored.")
    # vLLM's sampling extras (extra_body), as load generators send them.
    ignore_eos: bool = Field(default=False, description="Never end the answer early: generate exactly the cap.")
    min_tokens: int = Field(
        default=0, ge=0, le=MAX_TOKENS_CEILING, description="The answer may not end before this many tokens."
    )
    # sysaware extensions (extra_body); vLLM's server also reads `priority` under --scheduling-policy priority.
    priority: float = Field(default=0.0, description="Lower is served first under priority scheduling (a deadline, s).")
    stream_interval: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TOKENS_CEILING,
        description="Streamed: one chunk per this many output tokens after the first (vLLM's --stream-interval); "
        "absent: the server's setting (1: one chunk per engine step).",
    )
    request_id: str | None = Field(default=None, description="Caller's id for tracing; one is made up if absent.")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n=1 is supported, got {n}")
        return n

    @model_validator(mode="after")
    def _seed_range(self) -> "GenerationParams":
        if self.seed is not None and not (-(2**63) <= self.seed < 2**63):
            raise ValueError("seed must fit in a signed 64-bit integer")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        """The output cap the client asked for, None when it left it open."""
        return self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        return "max_tokens"

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """Usage on every chunk: vLLM's continuous_usage_stats, which (as on vLLM) needs include_usage too."""
        return self.include_usage and self.stream_options.continuous_usage_stats

    def generation_request(
        self, request_id: str, messages: tuple[ChatMessage, ...], max_tokens: int
    ) -> GenerationRequest:
        return GenerationRequest(
            request_id=request_id,
            model=self.model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0.0 if self.temperature is None else self.temperature,
            seed=0 if self.seed is None else self.seed,
            priority=self.priority,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
        )


class ChatCompletionRequest(GenerationParams):
    """POST /v1/chat/completions body."""

    messages: list[ChatMessageIn] = Field(min_length=1, description="The conversation, oldest first.")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, le=MAX_TOKENS_CEILING, description="OpenAI's newer name for max_tokens; wins if both."
    )

    @property
    def requested_max_tokens(self) -> int | None:
        """The output cap the client asked for (max_completion_tokens first), None when it left it open."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def max_tokens_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def chat_messages(self) -> tuple[ChatMessage, ...]:
        return tuple(ChatMessage(m.role, m.text()) for m in self.messages)


class CompletionRequest(GenerationParams):
    """POST /v1/completions body (the legacy text completions that load generators use by default).

    A prompt is served as one user message of the chat model, so its ``prompt_tokens`` include the twin's chat
    template (4 tokens). A list of prompts is a batch: one choice per prompt, in order. Token-id prompts and
    ``echo`` are refused: the twin has text, not the served model's tokenizer.
    """

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="The text to continue, or a list of texts (one choice each)."
    )
    max_tokens: int | None = Field(
        default=16, ge=1, le=MAX_TOKENS_CEILING, description="Output cap, tokens; 16 by default, as OpenAI and vLLM."
    )
    echo: bool = Field(default=False, description="Not supported: true is refused.")
    best_of: int | None = Field(default=None, description="Only 1 (or absent) is served.")
    suffix: str | None = Field(default=None, description="Accepted and ignored.")

    @field_validator("prompt")
    @classmethod
    def _text_prompts(cls, prompt: str | list) -> str | list[str]:
        if isinstance(prompt, list):
            if not prompt:
                raise ValueError("at least one prompt is required")
            if not all(isinstance(p, str) for p in prompt):
                raise ValueError("token-id prompts are not supported: send the prompt as text")
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported: the response never repeats the prompt; send echo=false")
        return echo

    @field_validator("best_of")
    @classmethod
    def _one_candidate(cls, best_of: int | None) -> int | None:
        if best_of not in (None, 1):
            raise ValueError(f"only best_of=1 is supported, got {best_of}")
        return best_of

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# ---- responses ------------------------------------------------------------------------------------------------


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def new_text_completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def now_unix_s() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, result: GenerationResult) -> "Usage":
        return cls.so_far(result.prompt_tokens, result.output_tokens)

    @classmethod
    def so_far(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )

    @classmethod
    def total(cls, results: Iterable[GenerationResult]) -> "Usage":
        """Several choices' usage summed (a batch of prompts), as vLLM reports it."""
        results = list(results)
        return cls.so_far(sum(r.prompt_tokens for r in results), sum(r.output_tokens for r in results))


class EngineTimings(BaseModel):
    """sysaware extension on responses: what the engine measured, on its own clock (seconds of engine time, which
    is wall time x time_scale for the twin). Clients that do not know the field ignore it."""

    replica_id: str
    queue_time_s: float
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float
    num_preemptions: int

    @classmethod
    def of(cls, result: GenerationResult) -> "EngineTimings":
        return cls(
            replica_id=result.replica_id,
            queue_time_s=result.queue_time_s,
            ttft_s=result.ttft_s,
            tpot_s=result.tpot_s,
            e2e_s=result.e2e_s,
            num_preemptions=result.num_preemptions,
        )


def openai_finish_reason(reason: FinishReason) -> str | None:
    # OpenAI has no "abort"; an aborted request never reaches a client that is still listening.
    return None if reason is FinishReason.ABORT else reason.value


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    sysaware: EngineTimings | None = None

    @classmethod
    def of(cls, result: GenerationResult, completion_id: str) -> "ChatCompletion":
        return cls(
            id=completion_id,
            created=now_unix_s(),
            model=result.model,
            choices=[
                Choice(
                    message=AssistantMessage(content=result.text),
                    finish_reason=openai_finish_reason(result.finish_reason),
                )
            ],
            usage=Usage.of(result),
            sysaware=EngineTimings.of(result),
        )


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    sysaware: EngineTimings | None = None  # on the chunk that carries the finish_reason

    def sse(self) -> str:
        """This chunk as one server-sent event, as OpenAI sends it: ``finish_reason`` always present (null until
        the end), empty delta fields and absent extras left out."""
        data = self.model_dump(mode="json")
        for choice in data["choices"]:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
            del choice["logprobs"]
        return _sse(data)


def _sse(data: dict) -> str:
    """``data`` as one server-sent event, without the top-level extras that are absent (usage, sysaware)."""
    for key in ("usage", "sysaware"):
        if data.get(key, 0) is None:
            del data[key]
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None  # null until the choice's last streamed event
    sysaware: EngineTimings | None = None  # this choice's engine timings (one request per prompt)


class Completion(BaseModel):
    """A text completion: one choice per prompt, the usage summed over them."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage

    @classmethod
    def of(cls, results: list[GenerationResult], completion_id: str) -> "Completion":
        return cls(
            id=completion_id,
            created=now_unix_s(),
            model=results[0].model,
            choices=[
                CompletionChoice(
                    index=i,
                    text=r.text,
                    finish_reason=openai_finish_reason(r.finish_reason),
                    sysaware=EngineTimings.of(r),
                )
                for i, r in enumerate(results)
            ],
            usage=Usage.total(results),
        )


class CompletionChunk(BaseModel):
    """One server-sent event of a streamed text completion (same ``object`` as the whole one, as OpenAI sends)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None

    def sse(self) -> str:
        data = self.model_dump(mode="json")
        for choice in data["choices"]:
            if choice["sysaware"] is None:
                del choice["sysaware"]
        return _sse(data)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sysaware"
    root: str  # the weights (Hugging Face id) the model stands for, as vLLM reports it
    max_model_len: int  # context length, tokens (vLLM's extension)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- errors -----------------------------------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    message: str
    type: str  # "invalid_request_error" (4xx) or "internal_error" (5xx), as OpenAI names them
    param: str | None = None  # the offending field, e.g. "max_tokens" or "messages.0.role"
    code: str | None = None  # machine-readable reason, e.g. "model_not_found", "context_length_exceeded"


class ErrorResponse(BaseModel):
    error: ErrorInfo

    @classmethod
    def of(cls, status: int, message: str, param: str | None = None, code: str | None = None) -> ErrorResponse:
        """The body of a refusal with HTTP ``status``: a client error (4xx) or the server's (5xx)."""
        kind = "invalid_request_error" if status < 500 else "internal_error"
        return cls(error=ErrorInfo(message=message, type=kind, param=param, code=code))
