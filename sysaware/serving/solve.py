"""``POST /v1/solve`` on the ingress: one programming problem through the orchestrator deployment.

    curl -s localhost:8000/v1/solve -H 'content-type: application/json' \
        -d '{"problem": "Write a function to find the shared elements from the given two lists.",
             "tests": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"], "slo_s": 30}'

JSON in; JSON out (``SolveResponse``), or with ``stream: true`` server-sent events: ``admission``, one ``step`` per
agent call in the order they finish, then ``final`` (or ``error``). A refusal is a plain HTTP error before any
event: 400 naming the field, 422 ``slo_unattainable``, 503 ``slo_unattainable_under_load`` with Retry-After.

The ingress never waits unboundedly on the orchestrator: 3 x the SLO (wall seconds) + 30 s, then 504; an
orchestrator replica that dies mid-solve is a 503 at once. The route is mounted on the ingress's FastAPI app (so
its key check and body limit, ``http_guard``, apply before the body is read) and answers 404 when the application
was built without the orchestrator (``build_app(solve=None)``).
"""

# No `from __future__ import annotations`: FastAPI resolves the body's annotation at import.
import asyncio
import json
import logging
import math
import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from sysaware.serving.openai_types import ErrorResponse
from sysaware.serving.solve_types import SolveRequest

logger = logging.getLogger(__name__)

router = APIRouter()

WAIT_SLO_FACTOR = 3.0  # the ingress waits at most 3 x the SLO (wall s) + WAIT_GRACE_S for a solve
WAIT_GRACE_S = 30.0
DEFAULT_SLO_GUESS_S = 120.0  # engine s, for the wait bound of a request that brought no SLO


def wait_bound_s(slo_s: float | None, time_scale: float) -> float:
    """Wall seconds the ingress waits for a solve before answering 504."""
    return WAIT_SLO_FACTOR * (slo_s or DEFAULT_SLO_GUESS_S) / time_scale + WAIT_GRACE_S


def error_response(status: int, message: str, code: str, param: str | None = None,
                   retry_after_s: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(int(math.ceil(retry_after_s)))} if retry_after_s is not None else None
    body = ErrorResponse.of(status, message, param=param, code=code).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def _from_event(event: dict) -> JSONResponse:
    return error_response(event["status"], event["message"], event["code"], event.get("param"), event.get("retry_after_s"))


def _orchestrator_failed(e: BaseException) -> JSONResponse:
    cause = getattr(e, "cause", None) or e
    logger.error("orchestrator call failed: %r", e)
    return error_response(503, f"the orchestrator failed: {type(cause).__name__}: {cause}", "orchestrator_failed")


def _timed_out(bound_s: float) -> JSONResponse:
    return error_response(504, f"no answer from the orchestrator within {bound_s:.0f} s", "solve_timeout")


def sse(event: dict) -> bytes:
    return f"event: {event['event']}\ndata: {json.dumps(event)}\n\n".encode()


@router.post("/v1/solve", response_model=None)
async def solve(body: SolveRequest) -> Response:
    ingress = serve.get_replica_context().servable_object
    handle = getattr(ingress, "solver", None)
    if handle is None:
        return error_response(404, "/v1/solve is not enabled on this server (build_app(solve=...)).", "not_found")
    bound = wait_bound_s(body.slo_s, ingress.time_scale)
    payload = body.model_dump(mode="json")
    if not body.stream:
        response = handle.solve.remote(payload)
        try:
            event = await asyncio.wait_for(response, bound)
        except asyncio.TimeoutError:
            response.cancel()
            return _timed_out(bound)
        except Exception as e:
            return _orchestrator_failed(e)
        if event.get("event") != "final":
            return _from_event(event) if event.get("event") == "error" else _orchestrator_failed(RuntimeError("no result"))
        event.pop("event")
        return JSONResponse(event)

    deadline = time.monotonic() + bound
    stream = handle.options(stream=True).solve_stream.remote(payload)
    try:
        first = await asyncio.wait_for(stream.__anext__(), bound)
    except asyncio.TimeoutError:
        stream.cancel()
        return _timed_out(bound)
    except Exception as e:
        stream.cancel()
        return _orchestrator_failed(e)
    if first.get("event") == "error":
        return _from_event(first)

    async def events():
        yield sse(first)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(stream.__anext__(), max(deadline - time.monotonic(), 0.001))
                except StopAsyncIteration:
                    return
                yield sse(event)
        except asyncio.TimeoutError:
            stream.cancel()
            yield sse({"event": "error", "status": 504, "code": "solve_timeout", "message": f"no answer within {bound:.0f} s"})
        except asyncio.CancelledError:  # the client went away
            stream.cancel()
            raise
        except Exception as e:
            cause = getattr(e, "cause", None) or e
            yield sse({"event": "error", "status": 503, "code": "orchestrator_failed",
                       "message": f"the orchestrator failed: {type(cause).__name__}: {cause}"})

    return StreamingResponse(events(), media_type="text/event-stream")
