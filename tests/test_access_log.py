"""The access log as operators of nginx or HAProxy read it: host, query, user agent,
protocol and a request id (one the client can quote, the replica sees, and the log shows),
as JSON lines or in the combined format; and the request id rules on both engines."""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from router import logs
from router.access_log import redacted_query
from tests.support import running_replica, running_router, static_config
from tests.test_logs import restore_logging  # noqa: F401 (fixture)

COMBINED = re.compile(
    r'^(?P<client>\S+) - - \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) '
    r'(?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"(?P<extras>.*)$'
)


def access_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def config(port: int, engine: str, **proxy: Any) -> dict[str, Any]:
    return static_config(
        [("a", f"http://127.0.0.1:{port}")],
        health={"enabled": False},
        proxy={"engine": engine, **proxy},
    )


async def test_a_client_request_id_is_replaced_unless_the_peer_is_trusted(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        async with running_router(config(a.port, engine)) as router:
            async with client.get(f"{router.url}/x", headers={"X-Request-Id": "mine"}) as resp:
                given = resp.headers.getall("X-Request-Id")
                seen = CIMultiDict((await resp.json())["header_list"])
            async with client.get(f"{router.url}/x") as resp:
                other = resp.headers["X-Request-Id"]
        assert len(given) == 1
        assert given[0] != "mine"
        assert re.fullmatch(r"[0-9a-f]{17,32}", given[0])
        assert seen.getall("X-Request-Id") == given  # the replica sees the same, only id
        assert other != given[0]

        trusted = config(a.port, engine, trusted_proxies=["127.0.0.1/32"])
        async with running_router(trusted) as router:
            async with client.get(f"{router.url}/x", headers={"X-Request-Id": "lb-42"}) as resp:
                assert resp.headers.getall("X-Request-Id") == ["lb-42"]
                seen = CIMultiDict((await resp.json())["header_list"])
                assert seen.getall("X-Request-Id") == ["lb-42"]
            bad = "x" * 500  # not a plausible id, even from a trusted peer
            async with client.get(f"{router.url}/x", headers={"X-Request-Id": bad}) as resp:
                assert resp.headers["X-Request-Id"] != bad


async def test_an_error_the_router_answers_itself_carries_the_request_id(
    engine: str, client: aiohttp.ClientSession
) -> None:
    async with running_replica("a") as a:
        async with running_router(config(a.port, engine)) as router:
            router.app.drain("a", True)
            async with client.get(f"{router.url}/x") as resp:
                assert resp.status == 503
                assert re.fullmatch(r"[0-9a-f]{17,32}", resp.headers["X-Request-Id"])


@pytest.mark.usefixtures("restore_logging")
async def test_json_access_lines_carry_every_field(
    engine: str, client: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("warning", "text", access_log=True, access="json")
    async with running_replica("a") as a:
        async with running_router(config(a.port, engine), access_log=True) as router:
            async with client.get(
                f"{router.url}/v1/items?page=2&token=s3cret",
                headers={"User-Agent": "probe/1.0", "Referer": "https://example.test/"},
            ) as resp:
                request_id = resp.headers["X-Request-Id"]
                body = await resp.read()
    (line,) = access_lines(capsys.readouterr().err)
    entry = json.loads(line)
    assert entry["time"].endswith("Z")
    assert entry["request_id"] == request_id
    assert entry["host"] == router.url.removeprefix("http://")
    assert (entry["path"], entry["query"]) == ("/v1/items", "page=2&token=***")
    assert entry["protocol"] == "HTTP/1.1"
    assert (entry["user_agent"], entry["referer"]) == ("probe/1.0", "https://example.test/")
    assert (entry["status"], entry["bytes_out"], entry["replica"]) == (200, len(body), "a")
    for key in ("total_seconds", "upstream_seconds"):
        assert entry[key] == round(entry[key], 6)
        assert entry[key] > 0
    assert "s3cret" not in line


@pytest.mark.usefixtures("restore_logging")
async def test_combined_access_lines_parse_like_nginx_ones(
    engine: str, client: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("warning", "text", access_log=True, access="combined")
    async with running_replica("a") as a:
        async with running_router(config(a.port, engine), access_log=True) as router:
            async with client.get(
                f"{router.url}/p?q=1", headers={"User-Agent": 'quote " and \\ slash'}
            ) as resp:
                request_id = resp.headers["X-Request-Id"]
                body = await resp.read()
    (line,) = access_lines(capsys.readouterr().err)
    match = COMBINED.match(line)
    assert match, line
    assert match["client"] == "127.0.0.1"
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000", match["time"])
    assert match["request"] == "GET /p?q=1 HTTP/1.1"
    assert (match["status"], match["bytes"]) == ("200", str(len(body)))
    assert match["referer"] == "-"
    assert match["agent"] == "quote \\x22 and \\x5c slash"
    assert f"request_id={request_id}" in match["extras"]
    assert "replica=a" in match["extras"]


def test_credential_looking_query_values_are_masked() -> None:
    assert redacted_query("") == ""
    assert redacted_query("page=2&sort=name") == "page=2&sort=name"
    assert redacted_query("api_key=abc&x=1") == "api_key=***&x=1"
    assert redacted_query("X-Amz-Signature=abc&code=z") == "X-Amz-Signature=***&code=***"


@pytest.mark.usefixtures("restore_logging")
def test_the_cli_takes_the_access_log_format(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from router.cli import main

    runner = CliRunner()
    refused = runner.invoke(main, ["serve", "-c", "x.yaml", "--access-log-format", "apache"])
    assert refused.exit_code == 2
    assert "'text', 'json', 'combined'" in refused.output
    try:
        missing = str(tmp_path / "missing.yaml")
        runner.invoke(main, ["serve", "-c", missing, "--access-log", "--access-log-format", "json"])
        assert logs.access_format == "json"
    finally:
        logs.set_access_format(None)
