"""Server-sent events from the replicas' ``StreamChunk``s: OpenAI's chat chunks and text-completion chunks.

One completion may stream several choices (a text completion with a list of prompts: one replica stream each);
``events`` merges them into one SSE body and the writer numbers their choices. Usage follows ``stream_options``:
``include_usage`` adds a last event with the usage summed over the choices and no choices; vLLM's
``continuous_usage_stats`` also puts each choice's usage so far on every one of its events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from sysaware.engines.types import FinishReason, GenerationResult
from sysaware.engines.types import StreamChunk
from sysaware.serving.openai_types import (
    SSE_DONE,
    ChatCompletionChunk,
    ChunkChoice,
    CompletionChoice,
    CompletionChunk,
    Delta,
    EngineTimings,
    ErrorResponse,
    Usage,
    now_unix_s,
    openai_finish_reason,
)

logger = logging.getLogger(__name__)


class SSEWriter:
    """One completion's events. ``prompt_tokens[i]`` is choice ``i``'s prompt length (its usage so far needs it);
    subclasses say what a piece of text and a choice's end look like."""

    def __init__(
        self,
        completion_id: str,
        model: str,
        prompt_tokens: Sequence[int],
        include_usage: bool = False,
        continuous_usage: bool = False,
    ) -> None:
        self.completion_id = completion_id
        self.model = model
        self.prompt_tokens = tuple(prompt_tokens)
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        self.created = now_unix_s()
        self._results: dict[int, GenerationResult] = {}

    def chunk(self, index: int, chunk: StreamChunk) -> str:
        """The events for choice ``index``'s next chunk; after the last choice ends, the usage event if asked."""
        usage = Usage.so_far(self.prompt_tokens[index], chunk.num_tokens) if self.continuous_usage else None
        parts = [self._text(index, chunk, usage)]
        result = chunk.result
        if chunk.finished and result is not None:
            self._results[index] = result
            parts.append(self._end(index, result, Usage.of(result) if self.continuous_usage else None))
            if self.include_usage and len(self._results) == len(self.prompt_tokens):
                parts.append(self._usage(Usage.total(self._results.values())))
        return "".join(parts)

    def error(self, message: str) -> str:
        # The 200 status is already sent: OpenAI-compatible servers report a late failure as an error event.
        return f"data: {json.dumps(ErrorResponse.of(500, message).model_dump())}\n\n"

    def _text(self, index: int, chunk: StreamChunk, usage: Usage | None) -> str:
        raise NotImplementedError

    def _end(self, index: int, result: GenerationResult, usage: Usage | None) -> str:
        raise NotImplementedError

    def _usage(self, usage: Usage) -> str:
        raise NotImplementedError


class ChatSSEWriter(SSEWriter):
    """``chat.completion.chunk`` events: the role in a choice's first delta, the ``finish_reason`` (and the engine's
    timings) in its own last event."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._role_sent: set[int] = set()

    def _event(self, choices: list[ChunkChoice], **extra) -> str:
        return ChatCompletionChunk(
            id=self.completion_id, created=self.created, model=self.model, choices=choices, **extra
        ).sse()

    def _text(self, index: int, chunk: StreamChunk, usage: Usage | None) -> str:
        first = index not in self._role_sent
        if not chunk.text and not (chunk.finished and first):
            return ""
        self._role_sent.add(index)
        delta = Delta(role="assistant" if first else None, content=chunk.text)
        return self._event([ChunkChoice(index=index, delta=delta)], usage=usage)

    def _end(self, index: int, result: GenerationResult, usage: Usage | None) -> str:
        finish = ChunkChoice(index=index, delta=Delta(), finish_reason=openai_finish_reason(result.finish_reason))
        return self._event([finish], sysaware=EngineTimings.of(result), usage=usage)

    def _usage(self, usage: Usage) -> str:
        return self._event([], usage=usage)


class CompletionSSEWriter(SSEWriter):
    """``text_completion`` events: text pieces, then each choice's ``finish_reason`` with its engine timings."""

    def _event(self, choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return CompletionChunk(
            id=self.completion_id, created=self.created, model=self.model, choices=choices, usage=usage
        ).sse()

    def _text(self, index: int, chunk: StreamChunk, usage: Usage | None) -> str:
        if not chunk.text:
            return ""
        return self._event([CompletionChoice(index=index, text=chunk.text)], usage)

    def _end(self, index: int, result: GenerationResult, usage: Usage | None) -> str:
        reason = openai_finish_reason(result.finish_reason)
        end = CompletionChoice(index=index, text="", finish_reason=reason, sysaware=EngineTimings.of(result))
        return self._event([end], usage)

    def _usage(self, usage: Usage) -> str:
        return self._event([], usage)


_END_OF_STREAM = object()


async def _pump(index: int, chunks, queue: asyncio.Queue) -> None:
    """Move one replica stream's chunks into ``queue`` as ``(index, chunk)``; then the end marker, or the
    exception that ended the stream."""
    try:
        async for chunk in chunks:
            queue.put_nowait((index, chunk))
    except asyncio.CancelledError:
        raise
    except Exception as e:
        queue.put_nowait((index, e))
        return
    queue.put_nowait((index, _END_OF_STREAM))


async def events(
    firsts: Sequence[StreamChunk],
    streams: Sequence,
    writer: SSEWriter,
    on_result: Callable[[GenerationResult], None],
    stamps: Sequence[list[tuple[str, float]]] | None = None,
    on_overhead: Callable[[GenerationResult, tuple[tuple[str, float], ...]], None] | None = None,
) -> AsyncIterator[str]:
    """The SSE body of choices ``i`` = ``streams[i]`` (whose first chunk, ``firsts[i]``, was already awaited).

    A pump task per stream reads its chunks into one queue; each write sends every chunk queued since the previous
    write. Idle, that is one chunk per write, sent at once; under load, when writes lag, the hop to Serve's proxy
    carries fewer, larger messages instead of falling further behind. ``on_result`` sees each finished request;
    ``on_overhead`` (with ``stamps``, each choice's hop stamps) sees it with its stamps, the time the first event
    left (``ingress_sent``) added, unless it was aborted. A
    failed stream ends the body with an error event; a client that goes away cancels the replicas' generators
    still open (the engines free their KV).
    """
    queue: asyncio.Queue = asyncio.Queue()
    for index, first in enumerate(firsts):
        queue.put_nowait((index, first))
    loop = asyncio.get_running_loop()
    pumps = [loop.create_task(_pump(index, chunks, queue)) for index, chunks in enumerate(streams)]
    open_choices = set(range(len(streams)))
    first_write = True
    finished: list[tuple[int, GenerationResult]] = []
    try:
        while open_choices:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            parts = []
            for index, item in batch:
                if index not in open_choices:
                    continue  # its end marker, after the finished chunk
                if item is _END_OF_STREAM:
                    open_choices.discard(index)
                elif isinstance(item, BaseException):
                    logger.error("stream %s failed: %r", writer.completion_id, item)
                    parts.append(writer.error(f"the engine failed while streaming: {item!r}"))
                    open_choices.discard(index)
                    for other in open_choices:
                        streams[other].cancel()
                    open_choices.clear()
                    break
                else:
                    parts.append(writer.chunk(index, item))
                    if item.finished and item.result is not None:
                        on_result(item.result)
                        finished.append((index, item.result))
                        open_choices.discard(index)
            if first_write and stamps is not None:
                first_write = False
                sent = time.time()  # the first events are about to leave for Serve's proxy
                for choice_stamps in stamps:
                    choice_stamps.append(("ingress_sent", sent))
            if on_overhead is not None and stamps is not None:
                for index, result in finished:
                    if result.finish_reason is not FinishReason.ABORT:
                        on_overhead(result, tuple(stamps[index]))
            finished.clear()
            yield "".join(parts)
    finally:
        for pump in pumps:
            pump.cancel()
        for index in open_choices:
            streams[index].cancel()  # the client went away: the replica aborts the request
    yield SSE_DONE
