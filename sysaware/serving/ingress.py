"""The pool's HTTP front door on Ray Serve: an OpenAI-compatible API, the live telemetry and Prometheus metrics.

    POST /v1/chat/completions   the ``model`` field picks the deployment; ``stream: true`` gives server-sent events
    POST /v1/completions        text completions (a prompt, or a list of them), as vLLM's load generators use them
    GET  /v1/models             the pool's models
    GET  /v1/telemetry          the telemetry actor's snapshot (per replica and per model)
    GET  /metrics               Prometheus text with vLLM's metric names
    GET  /health
    POST /v1/solve              one programming problem through the orchestrator (solve.py), when it is deployed

Before any route, ``http_guard`` checks the API key (401) and the body size (413) without reading the body; the
settings (``IngressSettings``) come with the replica. Bad input never reaches a replica: the body is validated by
pydantic, the model looked up, the prompt bounded by its length in characters and then counted (off the event loop)
against the model's context; every refusal is an OpenAI-style error body naming the field or the limit, and the
server goes on serving: nothing a client sends may stall the event loop that answers ``/health``. What the engine
itself refuses (``ValueError``) is a 400 too, and every other error, down to a route that does not exist, has the
same OpenAI body.
"""

# No `from __future__ import annotations`: Serve rewrites the route methods' signatures for FastAPI, which then
# cannot resolve string annotations such as the request body's model.
import asyncio
import contextvars
import logging
import time
from collections.abc import Mapping
from functools import lru_cache

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from sysaware.config import ModelDeployment, PoolConfig
from sysaware.engines.tokens import count_prompt_tokens, count_tokens_batch
from sysaware.engines.types import ChatMessage, GenerationRequest, GenerationResult
from sysaware.serving.http_guard import guard
from sysaware.serving.ingress_settings import IngressSettings
from sysaware.serving.overhead import CLIENT_SENT_HEADER, client_sent_s, hop_durations
from sysaware.serving.openai_types import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    GenerationParams,
    ModelCard,
    ModelList,
    new_completion_id,
    new_text_completion_id,
    now_unix_s,
)
from sysaware.serving.prometheus import PoolMetrics
from sysaware.serving.solve import router as solve_router
from sysaware.serving.sse import ChatSSEWriter, CompletionSSEWriter, SSEWriter, events
from sysaware.serving.telemetry import snapshot_json

logger = logging.getLogger(__name__)

api = FastAPI(title="sysaware", description="System-aware serving of a model pool (OpenAI-compatible).")


class OpenAIError(Exception):
    """A refusal, rendered as OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorResponse.of(status, message, param=param, code=code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body.model_dump(), status_code=self.status)


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


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (a route that does not exist, a method a route does not take) in OpenAI's shape."""
    if exc.status_code == 404:
        message, code = f"There is no route {request.method} {request.url.path}.", "not_found"
    elif exc.status_code == 405:
        message, code = f"{request.url.path} does not take {request.method}.", "method_not_allowed"
    else:
        message, code = str(exc.detail), None
    response = OpenAIError(exc.status_code, message, code=code).response()
    response.headers.update(exc.headers or {})
    return response


@api.exception_handler(Exception)
async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered with OpenAI's body rather than a bare 'Internal Server Error'."""
    logger.exception("unhandled error in the ingress", exc_info=exc)
    return OpenAIError(500, f"internal error: {type(exc).__name__}", code="internal_error").response()


def _short_msg(error: Mapping) -> str:
    msg = str(error["msg"])
    if error.get("type") == "missing":
        return "field required"
    return msg.removeprefix("Value error, ")


def _count_releasing_gil(text: str) -> int:
    """``count_tokens(text)``, through the tokenizer's batch call: its single-text ``encode`` holds the GIL for the
    whole text (measured: a 500,000-character prompt stalled the event loop 0.5-0.8 s even from a worker thread),
    ``encode_batch`` releases it. Same tokens, same cost."""
    return count_tokens_batch([text])[0]


# Agents resend the same system prompts: count each distinct text once. Only texts up to CACHE_MAX_CHARS are kept:
# a memo of 4096 distinct long prompts would hold gigabytes.
_count_cached = lru_cache(maxsize=4096)(_count_releasing_gil)
CACHE_MAX_CHARS = 16_384
# Counting costs about 0.7 us a character: up to this many characters (~1.5 ms) it is done inline, cheaper than a
# thread hop.
INLINE_COUNT_MAX_CHARS = 2_048


def _count(text: str) -> int:
    return _count_cached(text) if len(text) <= CACHE_MAX_CHARS else _count_releasing_gil(text)


async def count_prompt_off_loop(messages: tuple[ChatMessage, ...]) -> int:
    """``count_prompt_tokens`` without holding the event loop: a long prompt is counted on a worker thread, with
    the GIL released, so ``/health`` and the other requests go on being answered meanwhile."""
    if sum(len(m.content) for m in messages) <= INLINE_COUNT_MAX_CHARS:
        return count_prompt_tokens(messages, _count)
    return await asyncio.to_thread(count_prompt_tokens, messages, _count)


_PROMPT_HAS = {"messages": "the messages have", "prompt": "the prompt has"}


async def check_lengths(
    messages: tuple[ChatMessage, ...],
    body: GenerationParams,
    model: ModelDeployment,
    max_chars_per_token: float,
    prompt_param: str = "messages",
) -> tuple[int, int]:
    """(prompt tokens, max_tokens to request) within the model's context, or OpenAIError naming the limit.

    Like vLLM: a prompt must leave room for one output token; prompt + max_tokens must fit the context; an open
    max_tokens means "up to the end of the context"; min_tokens may not exceed the cap. A prompt with more
    characters than the context could hold at ``max_chars_per_token`` is refused before it is counted: its length
    alone says it cannot fit. ``prompt_param`` names the field the prompt came from (``messages`` or ``prompt``).
    """
    context = model.architecture.max_position_embeddings
    has = _PROMPT_HAS[prompt_param]
    chars = sum(len(m.content) for m in messages)
    if chars > context * max_chars_per_token:
        raise OpenAIError(
            400,
            f"This model's maximum context length is {context} tokens; {has} {chars} characters, more than "
            f"{context} tokens can hold (at most {max_chars_per_token:g} characters a token). Please shorten the "
            f"{prompt_param}.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    prompt_tokens = await count_prompt_off_loop(messages)
    if prompt_tokens >= context:
        raise OpenAIError(
            400,
            f"This model's maximum context length is {context} tokens; {has} {prompt_tokens} tokens, which leaves "
            f"no room for output. Please shorten the {prompt_param}.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    requested = body.requested_max_tokens
    if requested is not None and prompt_tokens + requested > context:
        raise OpenAIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {prompt_param}, {requested} in the "
            f"completion); {body.max_tokens_param} may be at most {context - prompt_tokens} here.",
            param=body.max_tokens_param,
            code="context_length_exceeded",
        )
    max_tokens = context - prompt_tokens if requested is None else requested
    if body.min_tokens > max_tokens:
        raise OpenAIError(
            400,
            f"min_tokens ({body.min_tokens}) may not exceed the output cap ({max_tokens} tokens here).",
            param="min_tokens",
            code="invalid_value",
        )
    return prompt_tokens, max_tokens


def _engine_error(e: Exception) -> OpenAIError:
    """What a failed replica call means for the client. A ValueError raised in a replica reaches us as a
    RayTaskError that is also a ValueError; its ``cause`` is the original, whose message is the engine's own words
    (without the remote traceback): the request can never be served, a 400. Anything else is the server's fault."""
    cause = getattr(e, "cause", None) or e
    if isinstance(e, ValueError):
        return OpenAIError(400, str(cause), code="engine_rejected")
    logger.error("replica call failed: %r", e)
    return OpenAIError(503, f"the model replica failed: {type(cause).__name__}: {cause}", code="replica_failed")


def _remote_each(method, requests: list[GenerationRequest], *args) -> list:
    """``method.remote(r, *args)`` for each request (``method``: a deployment handle's method).

    Several calls made while serving one HTTP request are each made in a fresh context: Ray Serve's request router
    (2.60) indexes pending requests by the caller's internal request id, which every call inherits from the HTTP
    request, so two concurrent calls collide and the second is never routed (it hangs). In an empty context Serve
    gives each call an id of its own; the cost is that Serve no longer cancels them with the HTTP request, so the
    callers cancel them themselves (``_result``, ``sse.events``). A single call keeps the request's context.
    """
    if len(requests) == 1:
        return [method.remote(requests[0], *args)]
    return [contextvars.Context().run(method.remote, r, *args) for r in requests]


async def _all_or_none(awaitables) -> list:
    """Await them concurrently; if one fails, cancel the others (their replica requests are aborted) and raise."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


INGRESS_IN_STATE = "sysaware_ingress_in"  # request.state key: wall time the ingress's ASGI app was entered


def entry_stamps(request: Request) -> list[tuple[str, float]]:
    """The request's first overhead stamps, called first thing in a route: the client's send time (if its
    ``x-sysaware-sent-at`` header says), the ingress's ASGI entry and the route's. A malformed header is a 400
    naming it."""
    route_in = time.time()
    ingress_in = getattr(request.state, INGRESS_IN_STATE, None) or route_in
    try:
        sent = client_sent_s(request.headers.get(CLIENT_SENT_HEADER))
    except ValueError as e:
        raise OpenAIError(400, str(e), param=CLIENT_SENT_HEADER, code="invalid_value") from None
    return ([] if sent is None else [("client_sent", sent)]) + [("ingress_in", ingress_in), ("route_in", route_in)]


class ReplicaGuard:
    """``http_guard.guard`` with the settings of the replica it runs in, in front of every route.

    Registered on ``api`` at import, because serve.ingress freezes a copy of the app before the replica (and its
    settings) exists; the settings are looked up on the replica at the first request. Lifespan events pass
    straight through (they come before the replica is ready to be asked).
    """

    def __init__(self, app) -> None:
        self.app = app
        self._guarded = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        # The serving overhead's first server stamp (overhead.py: ingress_request starts here, before the guard).
        scope.setdefault("state", {})[INGRESS_IN_STATE] = time.time()
        if self._guarded is None:
            self._guarded = guard(self.app, serve.get_replica_context().servable_object.settings)
        await self._guarded(scope, receive, send)


api.add_middleware(ReplicaGuard)
api.include_router(solve_router)  # POST /v1/solve: answers 404 unless the ingress has an orchestrator (``solver``)


# Everything the Ingress methods use must be defined above it: serve.ingress pickles the routes by value at
# decoration time, with the module globals that exist at that moment.


@serve.ingress(api)
class Ingress:
    """The FastAPI app as a Serve deployment; ``models`` maps each served model name to its deployment's handle.
    ``time_scale`` (engine seconds per wall second of the twin replicas) is only reported, so clients that time
    requests on the wall clock can convert to engine time. ``settings``: API keys and size limits (none: no keys,
    the default limits)."""

    def __init__(
        self,
        pool: PoolConfig | dict,
        models: Mapping,
        time_scale: float = 1.0,
        settings: IngressSettings | None = None,
        solver=None,  # the orchestrator deployment's handle (/v1/solve), or None
    ) -> None:
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
        self.settings = settings or IngressSettings()
        self.solver = solver

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
    async def chat_completions(self, body: ChatCompletionRequest, raw: Request) -> Response:
        stamps = entry_stamps(raw)
        model = self._model(body.model)
        messages = body.chat_messages()
        prompt_tokens, max_tokens = await check_lengths(messages, body, model, self.settings.max_chars_per_token)
        completion_id = new_completion_id()
        request = body.generation_request(body.request_id or completion_id, messages, max_tokens)
        if body.stream:
            writer = ChatSSEWriter(
                completion_id, model.name, [prompt_tokens], body.include_usage, body.continuous_usage
            )
            return await self._stream(model, [request], writer, body, stamps)
        result = await self._result(self.handles[model.name].generate.remote(request))
        return JSONResponse(ChatCompletion.of(result, completion_id).model_dump(mode="json"))

    @api.post("/v1/completions", response_model=None)
    async def completions(self, body: CompletionRequest, raw: Request) -> Response:
        """Text completions: each prompt is one request (one user message) to the model, one choice each."""
        stamps = entry_stamps(raw)
        model = self._model(body.model)
        completion_id = new_text_completion_id()
        prompts = body.prompts()
        request_id = body.request_id or completion_id
        requests, prompt_tokens = [], []
        for i, prompt in enumerate(prompts):
            messages = (ChatMessage("user", prompt),)
            tokens, max_tokens = await check_lengths(
                messages, body, model, self.settings.max_chars_per_token, prompt_param="prompt"
            )
            rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
            requests.append(body.generation_request(rid, messages, max_tokens))
            prompt_tokens.append(tokens)
        if body.stream:
            writer = CompletionSSEWriter(
                completion_id, model.name, prompt_tokens, body.include_usage, body.continuous_usage
            )
            return await self._stream(model, requests, writer, body, stamps)
        responses = _remote_each(self.handles[model.name].generate, requests)
        results = await _all_or_none(self._result(r) for r in responses)
        return JSONResponse(Completion.of(results, completion_id).model_dump(mode="json"))

    def _model(self, name: str) -> ModelDeployment:
        try:
            return self.pool.model(name)
        except KeyError:
            known = ", ".join(m.name for m in self.pool.models)
            raise OpenAIError(
                404, f"The model {name!r} does not exist. Known models: {known}.", param="model", code="model_not_found"
            ) from None

    async def _result(self, response) -> GenerationResult:
        """The result of a replica's ``generate`` call; cancelled with its caller (the replica aborts it)."""
        try:
            result: GenerationResult = await response
        except asyncio.CancelledError:
            response.cancel()
            raise
        except Exception as e:
            raise _engine_error(e) from None
        self.metrics.observe(result)
        return result

    async def _stream(
        self,
        model: ModelDeployment,
        requests: list[GenerationRequest],
        writer: SSEWriter,
        body: GenerationParams,
        entry: list[tuple[str, float]],
    ) -> StreamingResponse:
        """Server-sent events, one replica stream per request (choice), one chunk per engine step or per
        ``stream_interval`` tokens (the request's, else the server's). The first chunks are awaited before
        answering, so a request the engine refuses is still a plain 400; a client that goes away cancels the
        replicas' generators (the engines free their KV). Each choice's first chunk brings the hops' wall stamps:
        with the ingress's own (``entry``: the client's send time if it gave one, the ingress's entry) they give ``sysaware:serving_overhead_seconds`` once the request finishes."""
        interval = body.stream_interval or self.settings.stream_interval
        dispatch = time.time()
        streams = _remote_each(self.handles[model.name].options(stream=True).generate_stream, requests, interval)
        try:
            firsts = await _all_or_none(s.__anext__() for s in streams)
        except BaseException as e:  # a refusal, or the client went away before the first chunk
            for stream in streams:
                stream.cancel()
            if isinstance(e, Exception):
                raise _engine_error(e) from None
            raise
        ingress_first = time.time()
        stamps = [
            [*entry, ("dispatch", dispatch), *first.stamps_s, ("ingress_first", ingress_first)]
            for first in firsts
        ]

        def on_overhead(result: GenerationResult, hop_stamps: tuple) -> None:
            self.metrics.observe_overhead(model.name, hop_durations(hop_stamps, result.ttft_s, self.time_scale))

        return StreamingResponse(
            events(firsts, streams, writer, self.metrics.observe, stamps, on_overhead),
            media_type="text/event-stream",
            headers={"x-request-id": requests[0].request_id},
        )

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

