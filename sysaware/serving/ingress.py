"""The pool's HTTP front door on Ray Serve: an OpenAI-compatible API, the live telemetry and Prometheus metrics.

    POST /v1/chat/completions   the ``model`` field picks the deployment; ``stream: true`` gives server-sent events
    GET  /v1/models             the pool's models
    GET  /v1/telemetry          the telemetry actor's snapshot (per replica and per model)
    GET  /metrics               Prometheus text with vLLM's metric names
    GET  /health

Bad input never reaches a replica: the body is validated by pydantic, the model looked up, the prompt counted against
the model's context; every refusal is an OpenAI-style error body naming the field or the limit, and the server goes
on serving. What the engine itself refuses (``ValueError``) is a 400 too.
"""

# No `from __future__ import annotations`: Serve rewrites the route methods' signatures for FastAPI, which then
# cannot resolve string annotations such as the request body's model.
import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from functools import lru_cache

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve

from sysaware.config import ModelDeployment, PoolConfig
from sysaware.engines.tokens import count_tokens
from sysaware.engines.tokens import count_prompt_tokens
from sysaware.engines.types import GenerationRequest, GenerationResult
from sysaware.engines.types import StreamChunk
from sysaware.serving.openai_types import (
    SSE_DONE,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Delta,
    EngineTimings,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
    new_completion_id,
    now_unix_s,
    openai_finish_reason,
)
from sysaware.serving.prometheus import PoolMetrics
from sysaware.serving.telemetry import snapshot_json

logger = logging.getLogger(__name__)

api = FastAPI(title="sysaware", description="System-aware serving of a model pool (OpenAI-compatible).")


class OpenAIError(Exception):
    """A refusal, rendered as OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(
            message=message,
            type="invalid_request_error" if status < 500 else "internal_error",
            param=param,
            code=code,
        )

    def response(self) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=self.info).model_dump(), status_code=self.status)


@api.exception_handler(OpenAIError)
async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
    return exc.response()


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """Malformed JSON or a bad field: 400 (as OpenAI and vLLM answer), naming the field of the first error."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", first["msg"])
        return OpenAIError(400, f"malformed JSON body: {detail}", code="invalid_json").response()
    path = [str(p) for p in first["loc"] if p != "body"]
    param = ".".join(path) or None
    message = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {_short_msg(e)}" for e in errors[:5]
    )
    return OpenAIError(400, message, param=param, code="invalid_value").response()


def _short_msg(error: Mapping) -> str:
    msg = str(error["msg"])
    if error.get("type") == "missing":
        return "field required"
    return msg.removeprefix("Value error, ")


# Agents resend the same system prompts: count each distinct text once.
_count_cached = lru_cache(maxsize=4096)(count_tokens)


def check_lengths(body: ChatCompletionRequest, model: ModelDeployment) -> tuple[int, int]:
    """(prompt tokens, max_tokens to request) within the model's context, or OpenAIError naming the limit.

    Like vLLM: a prompt must leave room for one output token; prompt + max_tokens must fit the context; an open
    max_tokens means "up to the end of the context".
    """
    context = model.architecture.max_position_embeddings
    prompt_tokens = count_prompt_tokens(body.chat_messages(), _count_cached)
    if prompt_tokens >= context:
        raise OpenAIError(
            400,
            f"This model's maximum context length is {context} tokens; the messages have {prompt_tokens} tokens, "
            "which leaves no room for output. Please shorten the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    requested = body.requested_max_tokens
    if requested is None:
        return prompt_tokens, context - prompt_tokens
    if prompt_tokens + requested > context:
        raise OpenAIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} in the completion); "
            f"{body.max_tokens_param} may be at most {context - prompt_tokens} here.",
            param=body.max_tokens_param,
            code="context_length_exceeded",
        )
    return prompt_tokens, requested


def _engine_error(e: Exception) -> OpenAIError:
    """What a failed replica call means for the client. A ValueError raised in a replica reaches us as a
    RayTaskError that is also a ValueError; its ``cause`` is the original, whose message is the engine's own words
    (without the remote traceback): the request can never be served, a 400. Anything else is the server's fault."""
    cause = getattr(e, "cause", None) or e
    if isinstance(e, ValueError):
        return OpenAIError(400, str(cause), code="engine_rejected")
    logger.error("replica call failed: %r", e)
    return OpenAIError(503, f"the model replica failed: {type(cause).__name__}: {cause}", code="replica_failed")


_END_OF_STREAM = object()


async def _pump(chunks, queue: asyncio.Queue) -> None:
    """Move the replica's chunks into ``queue``; then the end marker, or the exception that ended the stream."""
    try:
        async for chunk in chunks:
            queue.put_nowait(chunk)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        queue.put_nowait(e)
        return
    queue.put_nowait(_END_OF_STREAM)


class SSEWriter:
    """Turns a replica's ``StreamChunk``s into OpenAI's chunk events: the role in the first delta, the
    ``finish_reason`` (and the engine's timings) in its own last event, then the usage when asked for."""

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        self.completion_id = completion_id
        self.model = model
        self.include_usage = include_usage
        self.created = now_unix_s()
        self._role_sent = False

    def _event(self, choices: list[ChunkChoice], **extra) -> str:
        return ChatCompletionChunk(
            id=self.completion_id, created=self.created, model=self.model, choices=choices, **extra
        ).sse()

    def chunk(self, chunk: StreamChunk) -> str:
        parts = []
        if chunk.text or (chunk.finished and not self._role_sent):
            role = None if self._role_sent else "assistant"
            parts.append(self._event([ChunkChoice(delta=Delta(role=role, content=chunk.text))]))
            self._role_sent = True
        if chunk.finished and chunk.result is not None:
            result = chunk.result
            finish = ChunkChoice(delta=Delta(), finish_reason=openai_finish_reason(result.finish_reason))
            parts.append(self._event([finish], sysaware=EngineTimings.of(result)))
            if self.include_usage:
                parts.append(self._event([], usage=Usage.of(result)))
        return "".join(parts)

    def error(self, message: str) -> str:
        # The 200 status is already sent: OpenAI-compatible servers report a late failure as an error event.
        info = ErrorInfo(message=message, type="internal_error", param=None, code=None)
        return f"data: {json.dumps({'error': info.model_dump()})}\n\n"


# Everything the Ingress methods use must be defined above it: serve.ingress pickles the routes by value at
# decoration time, with the module globals that exist at that moment.


@serve.ingress(api)
class Ingress:
    """The FastAPI app as a Serve deployment; ``models`` maps each served model name to its deployment's handle.
    ``time_scale`` (engine seconds per wall second of the twin replicas) is only reported, so clients that time
    requests on the wall clock can convert to engine time."""

    def __init__(self, pool: PoolConfig | dict, models: Mapping, time_scale: float = 1.0) -> None:
        from sysaware.serving.telemetry import get_or_create_telemetry

        self.pool = pool if isinstance(pool, PoolConfig) else PoolConfig.model_validate(pool)
        self.handles = dict(models)
        missing = [m.name for m in self.pool.models if m.name not in self.handles]
        if missing:
            raise ValueError(f"no deployment handle for models {missing}")
        self.telemetry = get_or_create_telemetry()
        self.metrics = PoolMetrics()
        self.created = now_unix_s()
        self.time_scale = time_scale

    # ---- OpenAI API ---------------------------------------------------------------------------------------------

    @api.get("/v1/models")
    async def list_models(self) -> ModelList:
        return ModelList(
            data=[
                ModelCard(
                    id=m.name,
                    created=self.created,
                    root=m.hf_id,
                    max_model_len=m.architecture.max_position_embeddings,
                )
                for m in self.pool.models
            ]
        )

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(self, body: ChatCompletionRequest) -> Response:
        model = self._model(body.model)
        _, max_tokens = check_lengths(body, model)
        completion_id = new_completion_id()
        request = body.to_generation_request(body.request_id or completion_id, max_tokens)
        handle = self.handles[model.name]
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await self._stream(handle, request, completion_id, include_usage)
        try:
            result: GenerationResult = await handle.generate.remote(request)
        except Exception as e:
            raise _engine_error(e) from None
        self.metrics.observe(result)
        return JSONResponse(ChatCompletion.of(result, completion_id).model_dump(mode="json"))

    def _model(self, name: str) -> ModelDeployment:
        try:
            return self.pool.model(name)
        except KeyError:
            known = ", ".join(m.name for m in self.pool.models)
            raise OpenAIError(
                404, f"The model {name!r} does not exist. Known models: {known}.", param="model", code="model_not_found"
            ) from None

    async def _stream(
        self, handle, request: GenerationRequest, completion_id: str, include_usage: bool
    ) -> StreamingResponse:
        """Server-sent events. The first chunk is awaited before answering, so a request the engine refuses is
        still a plain 400; a client that goes away cancels the replica's generator (the engine frees its KV)."""
        chunks = handle.options(stream=True).generate_stream.remote(request)
        try:
            first = await chunks.__anext__()
        except Exception as e:
            raise _engine_error(e) from None
        writer = SSEWriter(completion_id, request.model, include_usage)
        return StreamingResponse(
            self._events(first, chunks, writer),
            media_type="text/event-stream",
            headers={"x-request-id": request.request_id},
        )

    async def _events(self, first: StreamChunk, chunks, writer: SSEWriter) -> AsyncIterator[str]:
        """The SSE body. A pump task reads the replica's chunks into a queue; each write sends every chunk queued
        since the previous write. Idle, that is one chunk per write, sent at once; under load, when writes lag,
        the hop to Serve's proxy carries fewer, larger messages instead of falling further behind."""
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait(first)
        pump = asyncio.get_running_loop().create_task(_pump(chunks, queue))
        finished = False
        try:
            while not finished:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                parts = []
                for item in batch:
                    if item is _END_OF_STREAM:
                        finished = True
                    elif isinstance(item, BaseException):
                        logger.error("stream %s failed: %r", writer.completion_id, item)
                        parts.append(writer.error(f"the engine failed while streaming: {item!r}"))
                        finished = True
                    else:
                        parts.append(writer.chunk(item))
                        if item.finished and item.result is not None:
                            self.metrics.observe(item.result)
                            finished = True
                    if finished:
                        break
                yield "".join(parts)
        finally:
            pump.cancel()
            if not finished:
                chunks.cancel()  # the client went away: the replica aborts the request
        yield SSE_DONE

    # ---- pool state ---------------------------------------------------------------------------------------------

    @api.get("/v1/telemetry")
    async def telemetry_snapshot(self) -> dict:
        return snapshot_json(await self.telemetry.snapshot.remote())

    @api.get("/metrics")
    async def prometheus_metrics(self) -> Response:
        snapshot = await self.telemetry.snapshot.remote()
        return Response(self.metrics.render(snapshot), media_type=CONTENT_TYPE_LATEST)

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "models": [m.name for m in self.pool.models], "time_scale": self.time_scale}

