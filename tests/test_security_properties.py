"""Security properties of the router as a whole: secrets never leak (logs, /status, /metrics,
error bodies, check-config), client-sent forwarding and geo headers are ignored from
untrusted peers, the admin API guards itself, and upstream TLS is verified by default."""

from __future__ import annotations

import ast
import base64
import inspect
import logging
import ssl
import textwrap
from pathlib import Path

import aiohttp
import pytest
import trustme
import yaml
from click.testing import CliRunner

from router.admin import AdminServer
from router.cli import main
from router.config import parse_config
from router.errors import ConfigError
from router.proxy.settings import UpstreamTLSConfig
from router.simulator import Simulator, SimulatorConfig
from tests.support import eventually, free_port, running_replica, running_router, static_config

API_KEY = "sk-TOPSECRET-api-key-0123456789"
ADMIN_TOKEN = "adm-TOPSECRET-token-9876543210"
TSIG_RAW = b"TOPSECRET-tsig-secret-bytes"
TSIG_SECRET = base64.b64encode(TSIG_RAW).decode()
SECRETS = (API_KEY, ADMIN_TOKEN, TSIG_SECRET, TSIG_RAW.decode())
ENV = {
    "PHALA_CLOUD_API_KEY": API_KEY,
    "PHALA_ROUTER_ADMIN_TOKEN": ADMIN_TOKEN,
    "TSIG_SECRET": TSIG_SECRET,
}


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret appears in {where}"


def secret_config(sim: Simulator, engine: str) -> dict[str, object]:
    overlay = sim.router_overlay()
    overlay["discovery"]["phala"].update({"interval": 0.1, "timeout": "500ms"})
    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0", "token_env": "PHALA_ROUTER_ADMIN_TOKEN"},
        **overlay,
        "proxy": {"engine": engine},
        "health": {"interval": "100ms", "timeout": "300ms"},
        "dns": {
            "name": "api.example.com",
            "min_interval": 0,
            "retry_interval": "100ms",
            "sinks": [
                {
                    "type": "rfc2136",
                    "server": f"127.0.0.1:{free_port()}",  # nobody there: writes fail, get logged
                    "zone": "example.com",
                    "tsig_key_name": "router-key",
                    "tsig_secret_env": "TSIG_SECRET",
                    "timeout": "200ms",
                }
            ],
        },
    }


async def test_secrets_never_appear_in_logs_status_metrics_or_error_bodies(
    engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with Simulator(SimulatorConfig.demo(api_key=API_KEY)) as sim:
        async with running_router(secret_config(sim, engine), environ=ENV) as router:
            await eventually(lambda: len(router.app.reconciler.current.routable) == 3)
            await eventually(lambda: "DNS sink" in caplog.text)  # a failed, logged TSIG write
            sim.break_api("500")  # discovery failures are logged too
            await eventually(lambda: router.app.discovery.consecutive_failures >= 1)
            sim.break_api("ok")
            auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            seen: list[str] = []
            async with aiohttp.ClientSession() as client:
                for url, headers in [
                    (f"{router.admin_url}/status", auth),
                    (f"{router.admin_url}/metrics", auth),
                    (f"{router.admin_url}/status", {}),  # 401 body
                    (f"{router.admin_url}/status", {"Authorization": "Bearer wrong"}),
                    (f"{router.admin_url}/admin/replicas/nope/drain", auth),
                    (f"{router.url}/", {}),
                    (f"{router.url}/x", {"Host": "evil.example", "X-API-Key": "guess"}),
                ]:
                    method = "POST" if "/admin/" in url else "GET"
                    async with client.request(method, url, headers=headers) as resp:
                        seen.append(f"{resp.status} {dict(resp.headers)} {await resp.text()}")
                async with client.post(f"{router.admin_url}/admin/reload", headers=auth) as resp:
                    seen.append(await resp.text())
            assert seen[0].startswith("200")
            assert seen[1].startswith("200")  # /metrics
    assert_no_secret("\n".join(seen), "an admin or proxy answer")
    assert_no_secret(caplog.text, "the logs")
    assert_no_secret(repr([r.__dict__ for r in caplog.records]), "log record fields")


def test_check_config_prints_no_secret(tmp_path: Path) -> None:
    config = {
        "listen": "127.0.0.1:8080",
        "admin": {"listen": "0.0.0.0:9090", "token_env": "PHALA_ROUTER_ADMIN_TOKEN"},
        "discovery": {"phala": {"app_id": "5a1a" + "0" * 36, "api_key_env": "PHALA_CLOUD_API_KEY"}},
        "dns": {
            "name": "api.example.com",
            "sinks": [
                {
                    "type": "rfc2136",
                    "server": "127.0.0.1:53",
                    "zone": "example.com",
                    "tsig_key_name": "k",
                    "tsig_secret_env": "TSIG_SECRET",
                }
            ],
        },
    }
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    for args in (["check-config", "-c", str(path)], ["check-config", "-c", str(path), "--json"]):
        result = CliRunner().invoke(main, args, env=ENV)
        assert result.exit_code == 0, result.output
        assert "TSIG_SECRET" in result.output  # the variable's name, not its value
        assert_no_secret(result.output, "check-config output")


def test_an_inline_api_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"discovery": {"phala": {"app_id": "5a1a" + "0" * 36, "api_key": API_KEY}}}, {}
        )
    assert "api_key_env" in str(caught.value)
    assert_no_secret(str(caught.value), "the config error")


# -- the admin API ------------------------------------------------------------------------


def test_admin_refuses_a_non_loopback_bind_without_a_token() -> None:
    for listen in ("0.0.0.0:9090", "[::]:9090", "10.1.2.3:9090"):
        with pytest.raises(ConfigError, match="token_env"):
            parse_config(static_config([("a", "http://a")], admin={"listen": listen}), {})
    parse_config(
        static_config([("a", "http://a")], admin={"listen": "0.0.0.0:9090", "token_env": "T"}),
        {},
    )


def test_admin_compares_tokens_in_constant_time_only() -> None:
    """By inspection: the auth middleware calls hmac.compare_digest and compares the token
    with no other operator (== on secrets leaks their length and prefix through timing)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(AdminServer._auth)))
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert "hmac.compare_digest" in calls
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            assert "_token" not in ast.unparse(node) or "is not None" in ast.unparse(node)


async def test_admin_token_is_required_exactly(engine: str) -> None:
    async with running_replica("a") as a:
        config = static_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            admin={"listen": "127.0.0.1:0", "token_env": "PHALA_ROUTER_ADMIN_TOKEN"},
            proxy={"engine": engine},
        )
        async with running_router(config, environ=ENV) as router, aiohttp.ClientSession() as c:
            for given, expected in [
                (None, 401),
                (f"Bearer {ADMIN_TOKEN[:-1]}", 401),  # a prefix
                (f"Bearer {ADMIN_TOKEN}x", 401),  # an extension
                (f"bearer {ADMIN_TOKEN}", 401),
                (ADMIN_TOKEN, 401),
                (f"Bearer {ADMIN_TOKEN}", 200),
            ]:
                headers = {"Authorization": given} if given else {}
                async with c.get(f"{router.admin_url}/status", headers=headers) as resp:
                    assert resp.status == expected, given
            async with c.get(f"{router.admin_url}/healthz") as resp:
                assert resp.status == 200  # probes stay open


# -- forwarding and geo headers from untrusted peers -------------------------------------


async def test_client_forwarding_headers_are_replaced_from_an_untrusted_peer(
    engine: str,
) -> None:
    async with running_replica("a") as a:
        config = static_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            proxy={"engine": engine},
            health={"enabled": False},
        )
        async with running_router(config) as router, aiohttp.ClientSession() as c:
            spoofed = {
                "X-Forwarded-For": "6.6.6.6",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "bank.example",
                "Forwarded": "for=6.6.6.6;proto=https",
                "X-Real-IP": "6.6.6.6",
            }
            async with c.get(f"{router.url}/who", headers=spoofed) as resp:
                seen = (await resp.json())["headers"]
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] != "bank.example"
    assert "Forwarded" not in seen
    assert "X-Real-IP" not in seen


@pytest.mark.parametrize("trusted", [False, True])
async def test_geo_headers_steer_only_from_trusted_proxies(engine: str, trusted: bool) -> None:
    async with running_replica("us") as us, running_replica("eu") as eu:
        config = {
            "listen": "127.0.0.1:0",
            "admin": {"listen": "127.0.0.1:0"},
            "discovery": {
                "static": [
                    {"id": "us", "url": f"http://127.0.0.1:{us.port}", "region": "us-east"},
                    {"id": "eu", "url": f"http://127.0.0.1:{eu.port}", "region": "eu-west"},
                ]
            },
            "routing": {"policy": "geo", "debug_headers": True},
            "health": {"enabled": False},
            "proxy": {
                "engine": engine,
                "trusted_proxies": ["127.0.0.1/32"] if trusted else [],
            },
        }
        async with running_router(config) as router, aiohttp.ClientSession() as c:
            answered = set()
            for _ in range(6):
                headers = {
                    "CF-IPCountry": "DE",
                    "CloudFront-Viewer-Latitude": "50.1",
                    "CloudFront-Viewer-Longitude": "8.7",
                    "X-Forwarded-For": "81.0.0.1",
                }
                async with c.get(f"{router.url}/geo", headers=headers) as resp:
                    answered.add((await resp.json())["replica"])
                    route = resp.headers.get("X-Router-Route", "")
    if trusted:
        assert answered == {"eu"}, route
    else:
        assert answered == {"us", "eu"}, route  # no location: plain spread over both
        assert "header" not in route


# -- upstream TLS -------------------------------------------------------------------------


def test_upstream_tls_verification_is_on_by_default() -> None:
    assert UpstreamTLSConfig().verify is True
    config = parse_config(static_config([("a", "https://a.example")]), {})
    assert config.upstream_tls.verify is True


async def test_a_replica_with_an_untrusted_certificate_is_refused(
    engine: str, tmp_path: Path
) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("replica.test").configure_cert(context)
    async with running_replica("tls", ssl_context=context) as replica:
        base = static_config(
            [("tls", "https://replica.test")],
            discovery={"connect_to": {"replica.test": f"127.0.0.1:{replica.port}"}},
            proxy={"engine": engine},
            health={"enabled": False},
        )
        async with running_router(base) as router, aiohttp.ClientSession() as c:
            async with c.get(f"{router.url}/x") as resp:
                assert resp.status == 502
                assert (await resp.json())["cause"] == "tls"
        assert replica.hits == 0
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        trusted = {**base, "upstream_tls": {"ca_file": str(ca_file)}}
        async with running_router(trusted) as router, aiohttp.ClientSession() as c:
            async with c.get(f"{router.url}/x") as resp:
                assert resp.status == 200
        assert replica.hits == 1
