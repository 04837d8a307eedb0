"""What the ingress enforces before a request reaches a route: who may call it and how much a client may send.

``IngressSettings`` travels from the driver (``build_app``, ``sysaware serve``, Serve's config) to the ingress
replica. API keys are read where the application is built, from ``SYSAWARE_API_KEYS`` (comma-separated) and/or a
key file (one key a line, ``#`` comments), so they never appear in a Serve config, a command line or the dashboard;
inside they are ``SecretStr``, so no repr, log line or ``model_dump`` shows them.

With no keys, authentication is off: right for a loopback-only server (tests, a laptop), wrong for anything a
network can reach, which is why ``sysaware serve`` refuses a non-loopback host without keys unless told otherwise
(``exposure_problem``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

API_KEYS_ENV = "SYSAWARE_API_KEYS"
# The largest context in the shipped pools is 131,072 tokens: about 0.5 MiB of text at 4 bytes a token. 4 MiB leaves
# room for JSON escaping and long conversations, and bounds what one request can make the ingress parse.
DEFAULT_MAX_BODY_BYTES = 4 << 20
DEFAULT_OPEN_PATHS = ("/health", "/metrics")
# Text averages about 4 characters a token (code about 3); 16 is four times that. A prompt with more characters than
# context x 16 cannot fit in any realistic tokenisation, so it is refused without counting: counting a prompt of
# megabytes is what stalled the ingress.
DEFAULT_MAX_CHARS_PER_TOKEN = 16.0


class IngressSettings(BaseModel):
    """The ingress's guard: API keys, open paths, body and prompt-size bounds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_keys: tuple[SecretStr, ...] = Field(
        default=(),
        description="Accepted API keys (``Authorization: Bearer KEY``). Empty: authentication is off (loopback only).",
    )
    open_paths: tuple[str, ...] = Field(
        default=DEFAULT_OPEN_PATHS,
        description="Exact paths served without a key (health checks, Prometheus scrapes).",
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        gt=0,
        description="Largest request body, bytes; a larger one is refused with 413 before it is parsed.",
    )
    max_chars_per_token: float = Field(
        default=DEFAULT_MAX_CHARS_PER_TOKEN,
        gt=0,
        description="A prompt longer than context x this many characters is refused (400) before it is tokenised.",
    )

    stream_interval: int = Field(
        default=1,
        ge=1,
        description="vLLM's stream_interval: streams send the first token at once, then one chunk per this many "
        "tokens (1: one chunk per engine step, as vLLM by default). A request's own stream_interval wins.",
    )

    @field_validator("api_keys")
    @classmethod
    def _usable_keys(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for key in keys:
            value = key.get_secret_value()
            if not value or value != value.strip() or any(c.isspace() for c in value):
                raise ValueError("an API key must be non-empty and contain no whitespace")  # never echo the key
        return keys

    @field_validator("open_paths")
    @classmethod
    def _absolute_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in paths if not p.startswith("/")]
        if bad:
            raise ValueError(f"open paths must start with '/': {bad}")
        return paths

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @classmethod
    def from_sources(
        cls,
        api_key_file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **settings,
    ) -> IngressSettings:
        """Settings with the keys of ``$SYSAWARE_API_KEYS`` and of ``api_key_file`` (both, if both are given)."""
        env = os.environ if env is None else env
        keys = [k.strip() for k in env.get(API_KEYS_ENV, "").split(",") if k.strip()]
        if api_key_file is not None:
            keys += read_key_file(api_key_file)
        return cls(api_keys=tuple(SecretStr(k) for k in dict.fromkeys(keys)), **settings)


def read_key_file(path: str | Path) -> list[str]:
    """One key a line; blank lines and ``#`` comments skipped. A missing file is an error, not "no keys"."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read the API key file {path}: {e.strerror or e}") from None
    keys = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    keys = [k for k in keys if k]
    if not keys:
        raise ValueError(f"the API key file {path} holds no key")
    return keys


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def exposure_problem(host: str, settings: IngressSettings, allow_unauthenticated: bool = False) -> str | None:
    """Why serving ``settings`` on ``host`` is refused, or None: a non-loopback host needs keys unless the operator
    explicitly allows an open server."""
    if settings.auth_enabled or allow_unauthenticated or is_loopback(host):
        return None
    return (
        f"refusing to serve on {host} without API keys: anyone who can reach it could use the pool. "
        f"Set {API_KEYS_ENV} or pass --api-key-file, or pass --allow-unauthenticated if that is really intended."
    )
