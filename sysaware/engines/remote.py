"""An engine that is a remote OpenAI-compatible server: vLLM's, SGLang's, Ray Serve LLM's or our own ingress.

    generate / generate_stream   POST {endpoint}/v1/chat/completions, always streamed (stream_options.include_usage),
                                 so TTFT and the token times are measured here, on the client's clock
    stats                        the latest scrape of GET {endpoint}/metrics (vLLM's Prometheus names), taken every
                                 ``scrape_period_s`` by a background task; ``timestamp_s`` is when the scrape was
                                 sent (the server's numbers are at least that old), so a reader sees an honest age
    abort                        closing the HTTP stream (vLLM aborts a request whose client disconnected), then
                                 POST {endpoint}/inference/v1/abort_requests, vLLM's own abort route: a disconnect
                                 that lands while vLLM is still admitting the request leaks it to its end (0.32's
                                 AsyncLLM.generate aborts only once add_request has returned). A server without the
                                 route (404/405: SGLang, our ingress; 403: vLLM without --enable-scale-out) is asked
                                 once.

What a client cannot see is said as such: ``first_scheduled_s`` is None (the server's queue time is not on the
wire; ``queue_time_s`` is then the whole latency, an upper bound), the step in progress is an unknown phase
(``step_elapsed_ms == step_ms``: ``step_remaining_ms`` then expects half a step), and ``step_ms`` / ``step_tokens``
are the mean inter-token latency and the mean tokens per engine step between the last two scrapes (from the
``vllm:inter_token_latency_seconds`` and ``vllm:iteration_tokens_total`` histograms).

Only ``engines/`` knows that this is remote: a Serve replica hosts it like any engine (a replica then is a client of
a server that may itself be a pool).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sysaware.config import ModelDeployment, SchedulingPolicy
from sysaware.engines.clock import EngineClock
from sysaware.engines.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    ReplicaStats,
    StreamChunk,
    check_served,
    last_result,
    vllm_priority,
)

logger = logging.getLogger(__name__)

DEFAULT_SCRAPE_PERIOD_S = 0.5
STALE_AFTER_FAILURES = 20  # consecutive failed scrapes before check_health reports the server gone
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT}


@dataclass(frozen=True)
class Scrape:
    """What one ``/metrics`` scrape said about one model, summed over its engines (label ``model_name``)."""

    wall_s: float  # time.monotonic() when the request was sent: the numbers are no younger (a slow reply ages them)
    waiting: float
    running: float
    kv_usage: float  # max over engines, fraction
    preemptions: float
    prompt_tokens: float
    generation_tokens: float
    success: float
    num_gpu_blocks: int  # from vllm:cache_config_info (0 when the server does not say)
    block_size: int
    itl_sum_s: float  # vllm:inter_token_latency_seconds sum and count (vLLM < 0.9: time_per_output_token)
    itl_count: float
    iter_tokens_sum: float  # vllm:iteration_tokens_total histogram sum and count
    iter_count: float


def parse_metrics(text: str, model_name: str | None, wall_s: float) -> Scrape:
    """The numbers of a Prometheus exposition that ``ReplicaStats`` needs, for ``model_name`` (None: every model)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    kv_usage = 0.0
    blocks, block_size = 0, 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if model_name is not None and labels.get("model_name", model_name) != model_name:
                continue
            name = sample.name
            if name == "vllm:request_success_total" and labels.get("finished_reason") in ("abort", "error"):
                continue  # as the twin counts: an aborted or failed request is not a success
            if name == "vllm:cache_config_info":
                blocks += int(float(labels.get("num_gpu_blocks", 0) or 0))
                block_size = int(float(labels.get("block_size", 0) or 0))
            elif name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
                kv_usage = max(kv_usage, sample.value)
            else:
                sums[name] = sums.get(name, 0.0) + sample.value

    def get(*names: str) -> float:
        return next((sums[n] for n in names if n in sums), 0.0)

    return Scrape(
        wall_s=wall_s,
        waiting=get("vllm:num_requests_waiting"),
        running=get("vllm:num_requests_running"),
        kv_usage=kv_usage,
        preemptions=get("vllm:num_preemptions_total"),
        prompt_tokens=get("vllm:prompt_tokens_total"),
        generation_tokens=get("vllm:generation_tokens_total"),
        success=get("vllm:request_success_total"),
        num_gpu_blocks=blocks,
        block_size=block_size,
        itl_sum_s=get("vllm:inter_token_latency_seconds_sum", "vllm:time_per_output_token_seconds_sum"),
        itl_count=get("vllm:inter_token_latency_seconds_count", "vllm:time_per_output_token_seconds_count"),
        iter_tokens_sum=get("vllm:iteration_tokens_total_sum"),
        iter_count=get("vllm:iteration_tokens_total_count"),
    )


class RemoteEngine:
    """A client of one OpenAI-compatible server, serving ``model`` under ``served_name``."""

    def __init__(
        self,
        model: ModelDeployment,
        replica_id: str,
        endpoint: str,
        *,
        served_name: str | None = None,
        scrape_period_s: float = DEFAULT_SCRAPE_PERIOD_S,
        request_timeout_s: float = 600.0,
        clock: EngineClock | None = None,
    ) -> None:
        self.model = model
        self.replica_id = replica_id
        base = endpoint.rstrip("/")
        self.base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self.served_name = served_name or model.name
        self.scrape_period_s = scrape_period_s
        self.request_timeout_s = request_timeout_s
        self.clock = clock or EngineClock(1.0)
        self.send_priority = model.twin.scheduling_policy is SchedulingPolicy.PRIORITY
        self._client = None
        self._scrape_client = None
        self.scrapes_total = 0  # successful scrapes
        self.scrape_failures_total = 0
        self.aborts_sent_total = 0  # aborts the server's abort route accepted
        self._scraper: asyncio.Task | None = None
        self._last: Scrape | None = None
        self._previous: Scrape | None = None
        self._failures = 0
        self._last_error: BaseException | None = None
        self._closed = False
        self._abort_route = True  # until the server says it has none

    # ---- plumbing ---------------------------------------------------------------------------------------------

    def _http(self):
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                timeout=httpx.Timeout(self.request_timeout_s, connect=10.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            )
        return self._client

    def _ensure_scraper(self) -> None:
        if self._scraper is None and not self._closed:
            self._scraper = asyncio.get_running_loop().create_task(self._scrape_forever(), name="remote-metrics")

    def _body(self, request: GenerationRequest) -> dict:
        body: dict = {
            "model": self.served_name,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "request_id": request.request_id,
        }
        if request.ignore_eos:
            body["ignore_eos"] = True
        if request.min_tokens:
            body["min_tokens"] = request.min_tokens
        if self.send_priority:
            body["priority"] = vllm_priority(request.priority)
        return body

    # ---- requests ---------------------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await last_result(self.generate_stream(request))

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """Server-sent events turned into chunks; leaving early (close, cancel) closes the stream: the server aborts."""
        self.check_health()
        check_served(request, self.model.name)
        self._ensure_scraper()
        client = self._http()
        arrival = self.clock.now()
        token_times: list[float] = []
        text_parts: list[str] = []
        num_tokens = 0
        prompt_tokens = 0
        finish: FinishReason | None = None
        ended = False  # the server said its last word; anything else (cancel, close, error) aborts
        try:
            async with client.stream("POST", "/v1/chat/completions", json=self._body(request)) as response:
                if response.status_code >= 400:
                    ended = True  # refused: nothing to abort
                    body = (await response.aread()).decode(errors="replace")
                    raise _http_error(response.status_code, body, request.request_id)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        ended = True
                        raise RuntimeError(f"{self.base_url}: request {request.request_id!r} failed: "
                                           f"{event['error']}")
                    now = self.clock.now()
                    usage = event.get("usage") or {}
                    for choice in event.get("choices") or ():
                        delta = (choice.get("delta") or {}).get("content") or ""
                        reason = choice.get("finish_reason")
                        if reason:
                            finish = _FINISH.get(reason, FinishReason.STOP)
                        new_tokens = max(int(usage.get("completion_tokens", num_tokens + bool(delta))) - num_tokens, 0)
                        if delta or new_tokens:
                            # A chunk may carry several tokens (the server batches what one step gave): each is stamped
                            # with the chunk's arrival, the only time a client has.
                            token_times.extend([now] * max(new_tokens, 1 if delta else 0))
                            num_tokens = len(token_times)
                            text_parts.append(delta)
                            yield StreamChunk(text=delta, num_tokens=num_tokens)
                    if usage:
                        prompt_tokens = int(usage.get("prompt_tokens", prompt_tokens))
                        done_tokens = int(usage.get("completion_tokens", num_tokens))
                        if done_tokens > num_tokens and not event.get("choices"):  # the usage-only last event
                            token_times.extend([now] * (done_tokens - num_tokens))
                            num_tokens = done_tokens
            ended = True
        finally:
            if not ended:
                # Shielded: a second cancel of the caller must not drop the abort halfway.
                await asyncio.shield(self._abort(request.request_id))
        finished = self.clock.now()
        result = GenerationResult(
            request_id=request.request_id,
            model=request.model,
            text="".join(text_parts),
            prompt_tokens=prompt_tokens,
            output_tokens=num_tokens,
            finish_reason=finish or FinishReason.STOP,
            arrival_s=arrival,
            first_scheduled_s=None,  # not on the wire
            first_token_s=token_times[0] if token_times else None,
            finished_s=token_times[-1] if token_times else finished,
            num_preemptions=0,  # not on the wire either (the server's counter is in stats)
            replica_id=self.replica_id,
            token_times_s=tuple(token_times),
        )
        yield StreamChunk(text="", num_tokens=num_tokens, finished=True, result=result)

    async def _abort(self, request_id: str) -> None:
        """Best effort: vLLM's chat server names the request ``chatcmpl-<request_id>``; aborting one already gone is a
        no-op there. Failures are logged, never raised: the caller is leaving already."""
        if not self._abort_route or self._closed:
            return
        try:
            response = await self._http().post("/inference/v1/abort_requests", timeout=5.0,
                                               json={"request_ids": [f"chatcmpl-{request_id}"]})
            if 400 <= response.status_code < 500:  # no such route (404/405), or vLLM without --enable-scale-out (403)
                self._abort_route = False
                logger.info("%s: %s has no abort route for us (HTTP %d): a disconnect is the only abort it gets",
                            self.replica_id, self.base_url, response.status_code)
            elif response.is_success:
                self.aborts_sent_total += 1
        except Exception as e:  # the server is gone or slow: the disconnect is all it gets
            logger.debug("%s: abort of %r failed: %r", self.replica_id, request_id, e)

    # ---- stats ------------------------------------------------------------------------------------------------

    def _scrape_http(self):
        """A client of its own for /metrics, without keep-alive: a pooled connection the server closed while the
        scraper slept (uvicorn drops idle ones after 5 s) would fail the next scrape."""
        if self._scrape_client is None:
            import httpx

            self._scrape_client = httpx.AsyncClient(
                base_url=self.base_url, timeout=httpx.Timeout(10.0, connect=5.0),
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._scrape_client

    async def scrape_once(self) -> Scrape:
        # Stamped with the send time, not the receive time: on a loaded server the reply can take seconds, and the
        # gauges in it were read somewhere in between; the send time is the bound a reader can rely on.
        sent_s = time.monotonic()
        response = await self._scrape_http().get("/metrics")
        response.raise_for_status()
        scrape = parse_metrics(response.text, self.served_name, sent_s)
        self._previous, self._last = self._last, scrape
        self._failures = 0
        self.scrapes_total += 1
        return scrape

    async def _scrape_forever(self) -> None:
        while not self._closed:
            try:
                await self.scrape_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the server restarts or is slow: keep the last scrape, which ages
                self._failures += 1
                self.scrape_failures_total += 1
                self._last_error = e
                if self._failures in (1, 10) or self._failures % 100 == 0:
                    logger.warning("%s: scraping %s/metrics failed (%d in a row): %r", self.replica_id,
                                   self.base_url, self._failures, e)
            await asyncio.sleep(self.scrape_period_s)

    async def stats(self) -> ReplicaStats:
        self._ensure_scraper()
        if self._last is None:
            await self.scrape_once()
        last, prev = self._last, self._previous
        assert last is not None
        busy = last.running + last.waiting > 0
        step_ms, step_tokens = 0.0, 0
        if busy and prev is not None:
            d_count = last.itl_count - prev.itl_count
            if d_count > 0:
                step_ms = (last.itl_sum_s - prev.itl_sum_s) / d_count * 1e3
            d_iter = last.iter_count - prev.iter_count
            if d_iter > 0:
                step_tokens = round((last.iter_tokens_sum - prev.iter_tokens_sum) / d_iter)
        return ReplicaStats(
            replica_id=self.replica_id,
            model=self.model.name,
            timestamp_s=self.clock.now() - (time.monotonic() - last.wall_s),  # when the scrape was sent: the age shows
            num_requests_waiting=int(last.waiting),
            num_requests_running=int(last.running),
            kv_cache_usage_perc=float(last.kv_usage),
            ema_ttft_ms=0.0,  # not exported by vLLM (its TTFT histogram is cumulative); the router keeps its own
            prompt_tokens_total=int(last.prompt_tokens),
            generation_tokens_total=int(last.generation_tokens),
            num_preemptions_total=int(last.preemptions),
            requests_finished_total=int(last.success),
            num_gpu_blocks=last.num_gpu_blocks,
            block_size=last.block_size or self.model.twin.block_size,
            # The phase of the step in progress is unknown to a scraper: said by elapsed == expected.
            step_elapsed_ms=step_ms,
            step_ms=step_ms,
            step_tokens=step_tokens,
        )

    def check_health(self) -> None:
        if self._scraper is not None and self._scraper.done() and not self._scraper.cancelled():
            raise RuntimeError(f"metrics scraper of {self.replica_id} stopped: {self._scraper.exception()!r}")
        if self._failures >= STALE_AFTER_FAILURES:
            raise RuntimeError(
                f"{self.base_url} has not answered /metrics {self._failures} times in a row: {self._last_error!r}"
            )

    async def close(self) -> None:
        self._closed = True
        if self._scraper is not None:
            self._scraper.cancel()
            try:
                await self._scraper
            except (asyncio.CancelledError, Exception):
                pass
        for client in (self._client, self._scrape_client):
            if client is not None:
                await client.aclose()
        self._client = self._scrape_client = None


def _http_error(status: int, body: str, request_id: str) -> Exception:
    """An OpenAI error body as the exception the Engine contract names: 4xx is the request's fault (ValueError)."""
    try:
        error = json.loads(body)
        message = error.get("error", {}).get("message") or error.get("message") or body
    except (ValueError, AttributeError):
        message = body
    if 400 <= status < 500:
        return ValueError(f"request {request_id!r} refused ({status}): {message}")
    return RuntimeError(f"request {request_id!r} failed ({status}): {message}")

