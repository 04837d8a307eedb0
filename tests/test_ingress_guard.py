"""The ingress's guard without Ray: the settings and where keys come from, the ASGI middleware on a fake receive,
the builder's arguments, and ``sysaware serve`` refusing an open non-loopback host. (The guard in front of the real
Serve deployment is exercised over HTTP in test_ingress.py.)"""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from sysaware.cli import app as cli
from sysaware.serving.app import AppArgs
from sysaware.serving.http_guard import BodyLimit, bearer_token, guard
from sysaware.serving.ingress_settings import API_KEYS_ENV, IngressSettings, exposure_problem, is_loopback

KEY = "sk-unit-0123456789abcdef"


def create_settings(**overrides) -> IngressSettings:
    return IngressSettings(**({"api_keys": (SecretStr(KEY),)} | overrides))


def create_scope(path: str = "/v1/chat/completions", headers: dict[str, str] | None = None) -> dict:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "method": "POST", "path": path, "headers": raw}


class FakeApp:
    """An ASGI app that reads the whole body and answers 200; records what it read."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(app, scope: dict, chunks: list[bytes] = ()) -> tuple[int, dict, dict, int]:
    """Run ``app`` on ``scope`` with the body in ``chunks``; (status, headers, JSON body or {}, messages received)."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    messages = messages or [{"type": "http.request", "body": b"", "more_body": False}]
    received = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal received
        received += 1
        return messages[received - 1] if received <= len(messages) else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    parsed = json.loads(body) if headers.get("content-type") == "application/json" else {}
    return start["status"], headers, parsed, received


# ---- body limit ---------------------------------------------------------------------------------------------


def test_a_declared_length_over_the_limit_is_refused_without_reading_the_body():
    inner = FakeApp()
    status, _, body, received = call(BodyLimit(inner, 100), create_scope(headers={"content-length": "101"}), [b"x"])
    assert (status, body["error"]["code"], received, inner.bodies) == (413, "request_too_large", 0, [])
    assert "100 bytes" in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"


def test_a_chunked_body_is_refused_once_it_passes_the_limit_and_no_more_is_read():
    inner = FakeApp()
    chunks = [b"x" * 40] * 10  # 40, 80, 120 > 100: refused at the third chunk, the other seven never read
    scope = create_scope(headers={"transfer-encoding": "chunked"})
    status, _, body, received = call(BodyLimit(inner, 100), scope, chunks)
    assert (status, body["error"]["code"], received, inner.bodies) == (413, "request_too_large", 3, [])


def test_a_chunked_body_within_the_limit_reaches_the_app_whole():
    inner = FakeApp()
    scope = create_scope(headers={"transfer-encoding": "chunked"})
    status, _, _, _ = call(BodyLimit(inner, 100), scope, [b"a" * 50, b"b" * 50])
    assert status == 200 and inner.bodies == [b"a" * 50 + b"b" * 50]


@pytest.mark.parametrize("length,status", [("100", 200), ("0", 200), ("-1", 400), ("ten", 400)])
def test_declared_lengths_at_the_limit_pass_and_malformed_ones_are_400(length, status):
    assert call(BodyLimit(FakeApp(), 100), create_scope(headers={"content-length": length}))[0] == status


# ---- API keys -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,token",
    [(None, None), (b"Bearer abc", b"abc"), (b"bearer  abc ", b"abc"), (b"Bearer", None), (b"Basic abc", None)],
)
def test_bearer_token(value, token):
    assert bearer_token(value) == token


AUTH_CASES = [
    # (settings overrides, path, Authorization header, expected status, expected code)
    ({}, "/v1/models", f"Bearer {KEY}", 200, None),
    ({}, "/v1/models", None, 401, "missing_api_key"),
    ({}, "/v1/models", "Bearer sk-other", 401, "invalid_api_key"),
    ({}, "/health", None, 200, None),
    ({}, "/metrics", None, 200, None),
    ({"open_paths": ("/health",)}, "/metrics", None, 401, "missing_api_key"),
    ({"api_keys": ()}, "/v1/models", None, 200, None),  # no keys: authentication off
    ({"api_keys": (SecretStr("sk-first"), SecretStr(KEY))}, "/v1/models", f"Bearer {KEY}", 200, None),
]


@pytest.mark.parametrize("overrides,path,authorization,status,code", AUTH_CASES)
def test_api_keys(overrides, path, authorization, status, code):
    headers = {} if authorization is None else {"authorization": authorization}
    got, response_headers, body, _ = call(guard(FakeApp(), create_settings(**overrides)), create_scope(path, headers))
    assert got == status
    if code is not None:
        assert body["error"]["code"] == code and response_headers["www-authenticate"] == "Bearer"


def test_an_unauthenticated_oversized_body_gets_401_not_413():
    scope = create_scope(headers={"content-length": str(10**9)})
    assert call(guard(FakeApp(), create_settings()), scope)[2]["error"]["code"] == "missing_api_key"


# ---- settings and where keys come from ------------------------------------------------------------------------


def test_keys_come_from_the_environment_and_the_key_file(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# team keys\nsk-file-1\n\n  sk-file-2   # ci\nsk-env-1\n")
    settings = IngressSettings.from_sources(key_file, env={API_KEYS_ENV: "sk-env-1, sk-env-2,"}, max_body_bytes=10)
    assert [k.get_secret_value() for k in settings.api_keys] == ["sk-env-1", "sk-env-2", "sk-file-1", "sk-file-2"]
    assert settings.auth_enabled and settings.max_body_bytes == 10
    assert IngressSettings.from_sources(env={}).auth_enabled is False


@pytest.mark.parametrize("content,words", [(None, "cannot read"), ("# only a comment\n", "holds no key")])
def test_a_missing_or_empty_key_file_is_an_error_not_no_keys(tmp_path, content, words):
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=words):
        IngressSettings.from_sources(path, env={})


def test_keys_never_show_in_reprs_dumps_or_validation_errors():
    settings = create_settings()
    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    shown.append(repr(guard(None, settings)))
    assert all(KEY not in text for text in shown)
    with pytest.raises(ValidationError) as bad:
        IngressSettings(api_keys=(SecretStr("sk-has space"),))
    assert "sk-has" not in str(bad.value)


@pytest.mark.parametrize(
    "host,loopback",
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.org", False)],
)  # fmt: skip
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_an_open_server_off_loopback_needs_keys_or_an_explicit_yes():
    open_settings = IngressSettings()
    assert exposure_problem("127.0.0.1", open_settings) is None
    assert "0.0.0.0" in exposure_problem("0.0.0.0", open_settings)
    assert exposure_problem("0.0.0.0", open_settings, allow_unauthenticated=True) is None
    assert exposure_problem("0.0.0.0", create_settings()) is None


def test_sysaware_serve_refuses_a_public_host_without_keys_before_starting_anything(tmp_path):
    runner = CliRunner()
    refused = runner.invoke(cli, ["serve", "--host", "0.0.0.0"], env={API_KEYS_ENV: ""})
    assert refused.exit_code == 2 and "--allow-unauthenticated" in refused.output
    missing = runner.invoke(cli, ["serve", "--api-key-file", str(tmp_path / "nope")], env={API_KEYS_ENV: ""})
    assert missing.exit_code == 2 and "cannot read the API key file" in missing.output


def test_serve_builder_args_carry_the_settings_and_the_key_file_path_not_the_keys(tmp_path):
    """``serve run serve_app:build key=value ...`` passes strings; the config names a key file, never a key."""
    (tmp_path / "keys").write_text(f"{KEY}\n")
    args = AppArgs.model_validate(
        {"api_key_file": str(tmp_path / "keys"), "max_body_bytes": "1000", "open_paths": "/health,/v1/models"}
    )
    settings = args.ingress_settings()
    assert [k.get_secret_value() for k in settings.api_keys] == [KEY]
    assert settings.max_body_bytes == 1000 and settings.open_paths == ("/health", "/v1/models")
    assert KEY not in args.model_dump_json()


def test_stream_interval_travels_from_the_builder_args_and_below_one_is_refused_naming_it():
    assert AppArgs.model_validate({"stream_interval": "4"}).ingress_settings().stream_interval == 4
    assert AppArgs().ingress_settings().stream_interval == 1  # one chunk per engine step, as vLLM
    with pytest.raises(ValidationError, match="stream_interval"):
        AppArgs.model_validate({"stream_interval": "0"})
    refused = CliRunner().invoke(cli, ["serve", "--stream-interval", "0"], env={API_KEYS_ENV: ""})
    assert refused.exit_code == 2 and "--stream-interval" in refused.output


def test_serve_transport_reaches_every_deployment_and_an_unknown_one_is_refused_naming_it():
    from sysaware.config import DEFAULT_POOL, load_pool
    from sysaware.serving.app import build_app
    from sysaware.serving.replica import GRPC_ENV, SAME_LOOP_ENV, actor_options, deployment_for

    model = load_pool(DEFAULT_POOL).models[0]
    assert deployment_for(model).ray_actor_options == {"num_cpus": 0}  # Serve's defaults: actor tasks
    grpc = deployment_for(model, transport="grpc").ray_actor_options
    assert grpc["runtime_env"]["env_vars"] == GRPC_ENV
    both = actor_options(same_loop=True, transport="grpc")["runtime_env"]["env_vars"]
    assert both == {**SAME_LOOP_ENV, **GRPC_ENV}
    assert AppArgs.model_validate({"transport": "grpc"}).transport == "grpc"
    assert AppArgs().transport == "actor"
    with pytest.raises(ValidationError, match="transport"):
        AppArgs.model_validate({"transport": "udp"})
    with pytest.raises(ValueError, match="transport must be one of"):
        build_app(DEFAULT_POOL, transport="udp")
    refused = CliRunner().invoke(cli, ["serve", "--transport", "udp"], env={API_KEYS_ENV: ""})
    assert refused.exit_code == 2 and "transport" in refused.output


def test_direct_ingress_env_pins_the_port_and_a_cluster_without_it_is_named_in_the_error():
    from conftest import free_port

    from sysaware.serving.app import direct_ingress_url
    from sysaware.serving.replica import DIRECT_INGRESS_ENV, direct_ingress_env

    env = direct_ingress_env(18390)
    assert env.items() >= DIRECT_INGRESS_ENV.items()
    # Serve allocates from range(min, max): exactly the one port
    assert (env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"], env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == (
        "18390", "18391")  # fmt: skip
    with pytest.raises(ValueError, match="port"):
        direct_ingress_env(0)
    with pytest.raises(RuntimeError, match="RAY_SERVE_ENABLE_DIRECT_INGRESS=1"):
        direct_ingress_url("127.0.0.1", free_port(), timeout_s=0.5)  # nothing listens there
