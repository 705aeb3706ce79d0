"""Certificates by host name on `listen_tls` (`listen_tls.certificates`, `apps[].tls`), per
engine: the SNI a real TLS client sends picks the certificate, the default serves every
other name and clients without SNI, one app's files reload alone, bad files are config
errors that name the field."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from router.config import parse_config
from router.errors import ConfigError
from router.reload_plan import plan_reload
from tests.support import eventually, running_replica, running_router
from tests.test_tls_listener import write_pair


def pair(ca: trustme.CA, directory: Path, *names: str) -> dict[str, str]:
    """A certificate for `names` and its key, written under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = write_pair_for(ca, directory, *names)
    return {"cert_file": str(cert), "key_file": str(key)}


def write_pair_for(ca: trustme.CA, directory: Path, *names: str) -> tuple[Path, Path]:
    issued = ca.issue_cert(*names)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    # Write the key first and the chain last, then bump both mtimes: a watcher that sees a
    # change reads a matching pair.
    issued.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return cert_file, key_file


def config_with_certificates(
    ca: trustme.CA, tmp_path: Path, engine: str, api_port: int, ui_port: int
) -> dict[str, Any]:
    default_cert, default_key = write_pair(ca, "default.example.net", tmp_path)
    return {
        "listen": None,
        "admin": {"listen": "127.0.0.1:0"},
        "proxy": {"engine": engine},
        "health": {"enabled": False},
        "listen_tls": {
            "listen": "127.0.0.1:0",
            "cert_file": str(default_cert),
            "key_file": str(default_key),
            "reload_interval": "50ms",
            "certificates": [
                {"hosts": ["*.docs.example.com"], **pair(ca, tmp_path / "docs", "docs.example.com")}
            ],
        },
        "apps": [
            {
                "name": "api",
                "hosts": ["api.example.com", "api.example.com/v2"],
                "tls": pair(ca, tmp_path / "api", "api.example.com"),
                "discovery": {"static": [{"id": "api-0", "url": f"http://127.0.0.1:{api_port}"}]},
            },
            {
                "name": "ui",
                "hosts": ["ui.example.com"],
                "default": True,
                "tls": pair(ca, tmp_path / "ui", "ui.example.com"),
                "discovery": {"static": [{"id": "ui-0", "url": f"http://127.0.0.1:{ui_port}"}]},
            },
        ],
    }


async def served_names(port: int, ca: trustme.CA, sni: str | None) -> list[str]:
    """The DNS names of the certificate a new connection with this SNI (None: no SNI) gets."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=sni or ""
    )
    cert = writer.get_extra_info("peercert")
    writer.close()
    return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]


async def get_over_tls(port: int, ca: trustme.CA, host: str) -> tuple[int, bytes]:
    """A verified HTTPS request with SNI and Host both `host`: (status, body)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=host
    )
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_sni_picks_each_apps_certificate_and_the_default_serves_the_rest(
    engine: str, tmp_path: Path
) -> None:
    ca = trustme.CA()
    async with (
        running_replica("api") as api,
        running_replica("ui") as ui,
        running_router(config_with_certificates(ca, tmp_path, engine, api.port, ui.port)) as r,
    ):
        port = r.app.engine.addresses[0][1]
        expected = {
            "api.example.com": ["api.example.com"],
            "API.Example.COM": ["api.example.com"],
            "ui.example.com": ["ui.example.com"],
            "eu.docs.example.com": ["docs.example.com"],  # a listed wildcard
            "docs.example.com": ["default.example.net"],  # a wildcard never covers its apex
            "unknown.example.org": ["default.example.net"],
            None: ["default.example.net"],
        }
        for sni, names in expected.items():
            assert await served_names(port, ca, sni) == names, sni
        assert sorted(r.app.tls.expiry()) == [
            "tls",
            "tls:*.docs.example.com",
            "tls:api.example.com",
            "tls:ui.example.com",
        ]
        # a verifying client completes a request to each app under its own certificate
        for host, replica in [("api.example.com", b'"api"'), ("ui.example.com", b'"ui"')]:
            status, body = await get_over_tls(port, ca, host)
            assert status == 200, host
            assert replica in body, host


async def test_one_apps_certificate_reloads_alone(engine: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    async with (
        running_replica("api") as api,
        running_replica("ui") as ui,
        running_router(config_with_certificates(ca, tmp_path, engine, api.port, ui.port)) as r,
    ):
        port = r.app.engine.addresses[0][1]
        cert, key = write_pair_for(ca, tmp_path / "api", "api.example.com", "renewed.example.com")
        later = os.stat(cert).st_mtime_ns + 10_000_000_000
        for path in (key, cert):
            os.utime(path, ns=(later, later))

        async def renewed() -> bool:
            return "renewed.example.com" in await served_names(port, ca, "api.example.com")

        await eventually(renewed, timeout=10)
        assert await served_names(port, ca, "ui.example.com") == ["ui.example.com"]
        assert await served_names(port, ca, None) == ["default.example.net"]
        status, _ = await get_over_tls(port, ca, "api.example.com")
        assert status == 200


async def test_a_broken_renewal_keeps_the_apps_previous_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    async with (
        running_replica("api") as api,
        running_replica("ui") as ui,
        running_router(config_with_certificates(ca, tmp_path, "fast", api.port, ui.port)) as r,
    ):
        port = r.app.engine.addresses[0][1]
        assert r.app.tls is not None
        (tmp_path / "api" / "cert.pem").write_text("not a certificate")
        assert r.app.tls.reload() is True  # the default still loads; api's is refused
        assert await served_names(port, ca, "api.example.com") == ["api.example.com"]


def certificate_config(tmp_path: Path, **listen_tls: Any) -> dict[str, Any]:
    ca = trustme.CA()
    return {
        "listen_tls": {
            "listen": "127.0.0.1:0",
            **pair(ca, tmp_path / "default", "d"),
            **listen_tls,
        },
        "discovery": {"static": [{"id": "a", "url": "http://127.0.0.1:1"}]},
    }


def test_a_key_that_does_not_match_its_certificate_is_a_config_error(tmp_path: Path) -> None:
    ca = trustme.CA()
    one, other = pair(ca, tmp_path / "one", "a.example"), pair(ca, tmp_path / "two", "b.example")
    entry = {"hosts": ["a.example"], "cert_file": one["cert_file"], "key_file": other["key_file"]}
    with pytest.raises(ConfigError) as caught:
        parse_config(certificate_config(tmp_path, certificates=[entry]))
    message = str(caught.value)
    assert "listen_tls.certificates" in message
    assert "do not load" in message
    assert one["cert_file"] in message


def test_a_host_with_two_certificates_is_a_config_error(tmp_path: Path) -> None:
    ca = trustme.CA()
    entries = [
        {"hosts": ["a.example", "*.b.example"], **pair(ca, tmp_path / "one", "a.example")},
        {"hosts": ["*.B.example."], **pair(ca, tmp_path / "two", "b.example")},
    ]
    with pytest.raises(ConfigError, match=r"\*\.b\.example has two certificates"):
        parse_config(certificate_config(tmp_path, certificates=entries))


def test_a_certificate_host_with_a_path_is_a_config_error(tmp_path: Path) -> None:
    entry = {"hosts": ["a.example/v2"], **pair(trustme.CA(), tmp_path / "one", "a.example")}
    with pytest.raises(ConfigError, match=r"by host name \(SNI\) only; drop the path"):
        parse_config(certificate_config(tmp_path, certificates=[entry]))


def test_an_apps_certificate_needs_a_tls_listener_and_hosts(tmp_path: Path) -> None:
    tls = pair(trustme.CA(), tmp_path / "app", "api.example.com")
    app = {
        "name": "api",
        "hosts": ["api.example.com"],
        "tls": tls,
        "discovery": {"static": [{"id": "a", "url": "http://127.0.0.1:1"}]},
    }
    with pytest.raises(ConfigError, match="set listen_tls"):
        parse_config({"apps": [app]})
    with pytest.raises(ConfigError, match="tls but no hosts"):
        parse_config({"apps": [{**app, "hosts": [], "default": True}]})


def test_changing_an_apps_certificate_on_reload_says_a_restart_applies_it(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    started = parse_config(config_with_certificates(ca, tmp_path, "fast", 1, 2))
    moved = config_with_certificates(ca, tmp_path, "fast", 1, 2)
    moved["apps"][1]["hosts"] = ["ui.example.com", "www.example.com"]
    plan = plan_reload(started, started, parse_config(moved))
    assert "apps[].tls" in plan.restart_required
    assert "apps" in plan.apply  # the routes themselves move live
    same = plan_reload(
        started, started, parse_config(config_with_certificates(ca, tmp_path, "fast", 1, 2))
    )
    assert "apps[].tls" not in same.restart_required
