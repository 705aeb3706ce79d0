"""Log lines: JSON with stable keys, the access log's fields, and no secrets anywhere."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from router import logs
from router.app import RouterApp
from router.config import parse_config
from tests.support import running_replica, static_config

BASE_KEYS = {"ts", "time", "level", "logger", "message"}
ACCESS_KEYS = BASE_KEYS | {
    "method",
    "path",
    "status",
    "replica",
    "region",
    "upstream_seconds",
    "total_seconds",
    "retries",
    "attempts",
    "retry_budget_exhausted",
    "bytes_in",
    "bytes_out",
    "client",
    "error",
    "route",
    "request_id",
    "host",
    "query",
    "protocol",
    "user_agent",
    "referer",
}
ADMIN_TOKEN = "adm1n-T0KEN-never-logged"
CLIENT_SECRET = "client-api-key-never-logged"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.configure() rewires the root logger; put it back for the next test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access = logging.getLogger("router.access")
    access_level = access.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    access.setLevel(access_level)
    access.handlers.clear()  # --access-log-format json|combined gives it its own handler
    access.propagate = True


@asynccontextmanager
async def router_with_access_log(
    config: dict[str, Any], environ: dict[str, str]
) -> AsyncIterator[tuple[str, str]]:
    app = RouterApp(parse_config(config, environ), environ=environ, access_log_enabled=True)
    await app.start()
    host, port = app.engine.addresses[0]
    try:
        yield f"http://{host}:{port}", f"http://127.0.0.1:{app.admin.port}"
    finally:
        await app.stop(1.0)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no log lines"
    return [json.loads(line) for line in lines]


def test_json_lines_have_stable_keys_and_carry_exceptions(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("debug", "json")
    log = logging.getLogger("router.test")
    log.info("replica %s: %s -> %s", "a", "pending", "healthy")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    first, second = json_lines(capsys.readouterr().err)
    assert set(first) == BASE_KEYS
    assert first["message"] == "replica a: pending -> healthy"
    assert (first["level"], first["logger"]) == ("info", "router.test")
    assert first["time"].endswith("Z")
    assert first["time"][:4].isdigit()
    assert set(second) == BASE_KEYS | {"exception"}
    assert "ValueError: boom" in second["exception"]


def test_text_lines_show_access_fields(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("info", "text", access_log=True)
    logging.getLogger("router.access").info(
        "GET /x 200",
        extra={"access": {"method": "GET", "status": 200, "replica": "a", "error": None}},
    )
    line = capsys.readouterr().err.strip()
    assert line.endswith("router.access: GET /x 200 method=GET status=200 replica=a")


async def test_access_log_lines_are_json_with_every_field_and_no_secrets(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("debug", "json", access_log=True)
    environ = {"TEST_ADMIN_TOKEN": ADMIN_TOKEN}
    async with running_replica("a") as a:
        config = static_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            health={"enabled": False},
            admin={"token_env": "TEST_ADMIN_TOKEN"},
        )
        config["discovery"]["static"][0]["region"] = "eu-west"
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with router_with_access_log(config, environ) as (url, admin):
            async with aiohttp.ClientSession() as client:
                async with client.post(
                    f"{url}/v1/chat?api_key={CLIENT_SECRET}",
                    data=b"12345",
                    headers={"Authorization": f"Bearer {CLIENT_SECRET}"},
                ) as resp:
                    assert resp.status == 200
                    body = await resp.read()
                async with client.post(f"{admin}/admin/replicas/a/drain", headers=auth) as resp:
                    assert resp.status == 200
                async with client.get(f"{url}/x") as resp:
                    assert resp.status == 503
                async with client.post(f"{admin}/admin/replicas/a/undrain", headers=auth) as resp:
                    assert resp.status == 200
                async with client.get(f"{admin}/status", headers=auth) as resp:
                    status_text = await resp.text()
                async with client.get(f"{admin}/metrics", headers=auth) as resp:
                    metrics_text = await resp.text()
                async with client.get(f"{admin}/status") as resp:
                    refused = await resp.text()

    err = capsys.readouterr().err
    entries = json_lines(err)  # every line, from every logger, is JSON
    access = [e for e in entries if e["logger"] == "router.access"]
    assert len(access) == 2
    ok, refused_request = access
    assert set(ok) == ACCESS_KEYS
    assert set(refused_request) == ACCESS_KEYS
    assert ok["method"] == "POST"
    assert ok["path"] == "/v1/chat"
    assert ok["query"] == "api_key=***"  # credential-looking query values are masked
    assert ok["status"] == 200
    assert (ok["replica"], ok["region"]) == ("a", "eu-west")
    assert ok["upstream_seconds"] > 0
    assert ok["total_seconds"] >= ok["upstream_seconds"]
    assert ok["retries"] == 0
    assert (ok["bytes_in"], ok["bytes_out"]) == (5, len(body))
    assert ok["client"] == "127.0.0.1"
    assert (refused_request["status"], refused_request["replica"]) == (503, None)
    assert refused_request["error"] == "no_healthy_replica"
    assert any(e["message"] == "admin: drained replica a" for e in entries)

    for where, text in [
        ("logs", err),
        ("/status", status_text),
        ("/metrics", metrics_text),
        ("401 body", refused),
    ]:
        assert ADMIN_TOKEN not in text, where
        assert CLIENT_SECRET not in text, where


async def test_access_log_is_off_by_default(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("info", "json")
    async with running_replica("a") as a:
        config = static_config([("a", f"http://127.0.0.1:{a.port}")], health={"enabled": False})
        app = RouterApp(parse_config(config, {}), environ={})
        await app.start()
        try:
            host, port = app.engine.addresses[0]
            async with aiohttp.ClientSession() as client:
                async with client.get(f"http://{host}:{port}/x") as resp:
                    assert resp.status == 200
        finally:
            await app.stop(1.0)
    entries = json_lines(capsys.readouterr().err)
    assert not [e for e in entries if e["logger"] == "router.access"]


async def test_a_request_path_cannot_forge_text_log_lines(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("info", "text", access_log=True)
    async with running_replica("a") as a:
        config = static_config([("a", f"http://127.0.0.1:{a.port}")], health={"enabled": False})
        async with router_with_access_log(config, {}) as (url, _):
            async with aiohttp.ClientSession() as client:
                # (A %0A path never reaches the access log: aiohttp's router answers 404.)
                forged = "/x%0D%1B[2K2026-01-01 00:00:00,000 WARNING router.admin: drained a"
                async with client.get(url + forged) as resp:
                    assert resp.status == 200
    access = [line for line in capsys.readouterr().err.splitlines() if "router.access" in line]
    assert len(access) == 1
    # The path shows escaped (aiohttp decodes it: \\x0d; the fast engine keeps %0D), never as
    # raw control characters that would end the line or rewrite the terminal.
    assert "\r" not in access[0]
    assert "\x1b" not in access[0]
    assert ("/x\\x0d\\x1b[2K2026" in access[0]) or ("/x%0D%1B" in access[0])
