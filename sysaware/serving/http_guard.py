"""Pure ASGI middleware in front of the ingress's routes: API keys first, then the body-size limit.

Both decide before FastAPI reads or parses anything, so an unauthenticated client or an oversized body costs the
ingress's event loop almost nothing (a 20 MB body used to be parsed and tokenised in the handler, stalling
``/health`` for over a minute). Pure ASGI rather than ``BaseHTTPMiddleware``: the body must not be read (and
streaming responses must not be buffered) just to be refused or passed on.

    guard(app, settings)  ->  ApiKeyAuth(BodyLimit(app))

Refusals are OpenAI-shaped error bodies, like every other error of the API.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from pydantic import SecretStr
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sysaware.serving.ingress_settings import IngressSettings
from sysaware.serving.openai_types import ErrorResponse


def guard(app: ASGIApp, settings: IngressSettings) -> ASGIApp:
    """``app`` behind the settings' API keys (outermost: a stranger learns nothing, not even the limit) and body
    limit."""
    return ApiKeyAuth(BodyLimit(app, settings.max_body_bytes), settings.api_keys, settings.open_paths)


async def refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    message: str,
    *,
    code: str,
    headers: dict[str, str] | None = None,
) -> None:
    response = JSONResponse(ErrorResponse.of(status, message, code=code).model_dump(), status, headers=headers)
    await response(scope, receive, send)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), raw bytes."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class ApiKeyAuth:
    """``Authorization: Bearer KEY`` against the configured keys; 401 without one or with a wrong one.

    No keys: everything passes (authentication off). Paths in ``open_paths`` always pass (health checks and
    Prometheus scrapes carry no key). Keys are compared with ``hmac.compare_digest`` against every configured
    key, so the time taken says nothing about which key, or how much of one, matched; the client's key is never
    echoed or logged.
    """

    def __init__(self, app: ASGIApp, keys: Sequence[SecretStr], open_paths: Iterable[str]) -> None:
        self.app = app
        self._keys = tuple(keys)
        self.open_paths = frozenset(open_paths)

    def __repr__(self) -> str:
        return f"ApiKeyAuth(keys={len(self._keys)}, open_paths={sorted(self.open_paths)})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self._keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(header(scope, b"authorization"))
        if token is not None and self.accepts(token):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation; the server answers 403
            return
        if token is None:
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            code = "missing_api_key"
        else:
            message = "Incorrect API key provided."
            code = "invalid_api_key"
        await refuse(scope, receive, send, 401, message, code=code, headers={"www-authenticate": "Bearer"})

    def accepts(self, token: bytes) -> bool:
        matched = False
        for key in self._keys:  # no early exit: every key is compared
            matched |= hmac.compare_digest(token, key.get_secret_value().encode())
        return matched


def bearer_token(value: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (scheme case-insensitive), None if there is none."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


class BodyLimit:
    """Refuses a request body larger than ``max_bytes`` with 413 before anything parses it.

    A declared ``Content-Length`` is judged at once, without reading a byte (the HTTP server delivers no more than
    it declares). A chunked body has no length up front: it is read here, counted chunk by chunk, refused as soon
    as it passes the limit, and otherwise replayed to the app (which would buffer it whole anyway to parse JSON).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None:
            await self._declared(scope, receive, send, declared)
        elif header(scope, b"transfer-encoding") is not None:
            await self._chunked(scope, receive, send)
        else:  # neither: the request has no body
            await self.app(scope, receive, send)

    async def _declared(self, scope: Scope, receive: Receive, send: Send, declared: bytes) -> None:
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            await refuse(scope, receive, send, 400, "Invalid Content-Length header.", code="invalid_content_length")
        elif length > self.max_bytes:
            await refuse(
                scope,
                receive,
                send,
                413,
                f"The request body is {length} bytes; this server accepts at most {self.max_bytes} bytes.",
                code="request_too_large",
            )
        else:
            await self.app(scope, receive, send)

    async def _chunked(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away mid-upload: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await refuse(
                    scope,
                    receive,
                    send,
                    413,
                    f"The request body is larger than this server accepts ({self.max_bytes} bytes).",
                    code="request_too_large",
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` as one message, then hands over to the real one (which reports the
    client's disconnect to a streaming response)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
