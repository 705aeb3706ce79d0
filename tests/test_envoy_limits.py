"""`proxy.max_request_body` and `acme_webroot` under Envoy: a declared body over the limit
gets the Python engines' 413 and reaches no replica; ACME challenges are answered from the
webroot, before the https redirect and before any app."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from router.proxy.envoy.routes import route_configuration
from tests.envoy_support import require_envoy
from tests.support import running_replica, running_router
from tests.test_envoy_engine import envoy_config
from tests.test_envoy_mapping import config, snapshot_of


def test_a_declared_body_over_the_limit_is_answered_413_before_any_app() -> None:
    cfg = config(proxy={"max_request_body": 1000})
    routes = route_configuration("untrusted-http", snapshot_of(cfg), cfg)["virtual_hosts"][0]
    over, huge = routes["routes"][:2]
    assert over["match"]["headers"] == [
        {"name": "content-length", "range_match": {"start": 1001, "end": 2**63 - 1}}
    ]
    assert huge["match"]["headers"][0]["string_match"]["safe_regex"]["regex"] == r"^[0-9]{19,}$"
    assert over["direct_response"]["status"] == 413
    body = json.loads(over["direct_response"]["body"]["inline_string"])
    assert body == {"error": "body_too_large"}
    zero = config(proxy={"max_request_body": 0})  # no body at all, as the Python engines
    first = route_configuration("untrusted-http", snapshot_of(zero), zero)["virtual_hosts"][0]
    assert first["routes"][0]["match"]["headers"][0]["range_match"]["start"] == 1


def test_acme_challenges_come_first_on_the_plain_listener_only() -> None:
    cfg = config()
    snap = snapshot_of(cfg)
    plain = route_configuration("untrusted-http", snap, cfg, acme_cluster="acme-webroot")
    first = plain["virtual_hosts"][0]["routes"][0]
    assert first["match"] == {"prefix": "/.well-known/acme-challenge/"}
    assert first["route"]["cluster"] == "acme-webroot"
    secure = route_configuration(
        "untrusted-https", snap, cfg, scheme="https", acme_cluster="acme-webroot"
    )
    assert "acme" not in json.dumps(secure["virtual_hosts"][0]["routes"][0])


async def test_envoy_refuses_a_large_body_and_serves_acme_tokens(tmp_path: Path) -> None:
    require_envoy()
    challenges = tmp_path / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True)
    (challenges / "tok-1_A").write_text("tok-1_A.key-authorization")
    async with running_replica("a") as a:
        cfg = envoy_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            proxy={"max_request_body": 1000},
            acme_webroot=str(tmp_path),
        )
        async with running_router(cfg) as router, aiohttp.ClientSession() as client:
            async with client.post(f"{router.url}/upload", data=b"x" * 1001) as response:
                assert response.status == 413
                assert (await response.json())["error"] == "body_too_large"
            assert a.hits == 0  # refused before any replica was chosen
            async with client.post(f"{router.url}/upload", data=b"x" * 1000) as response:
                assert response.status == 200
            challenge = f"{router.url}/.well-known/acme-challenge/"
            async with client.get(challenge + "tok-1_A") as response:
                assert response.status == 200
                assert await response.text() == "tok-1_A.key-authorization"
            async with client.get(challenge + "missing") as response:
                assert response.status == 404
            async with client.get(challenge + "..%2Fsecret") as response:
                assert response.status == 404  # not an ACME token: nothing outside the webroot
