"""`GET /.well-known/phala-router/attestation` on Envoy's public listeners: the same answers
as the Python engines give in-process (tests/test_router_attestation.py, run here with
`engine: envoy`), made by the router on loopback behind an Envoy route, never routed to a
replica; the quote budget is per client address as Envoy saw it."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from router.proxy.envoy.loopback import attestation_route, forwarded_client
from router.proxy.envoy.routes import route_configuration
from router.proxy.well_known import ATTESTATION_PATH
from tests import test_router_attestation as conformance
from tests.envoy_support import require_envoy
from tests.test_envoy_mapping import config, snapshot_of
from tests.test_router_attestation import InCvm, in_cvm

__all__ = ["in_cvm"]  # the fixture, used by name below


async def test_in_a_cvm_envoy_serves_the_routers_attestation_and_a_nonce_bound_quote(
    in_cvm: InCvm, client: aiohttp.ClientSession
) -> None:
    require_envoy()
    await conformance.test_the_router_in_a_cvm_serves_its_attestation_and_a_nonce_bound_quote(
        "envoy", in_cvm, client
    )


async def test_a_bad_nonce_through_envoy_is_a_400_and_the_router_keeps_serving(
    in_cvm: InCvm, client: aiohttp.ClientSession
) -> None:
    require_envoy()
    await conformance.test_a_bad_nonce_is_a_400_naming_what_is_allowed_and_the_router_keeps_serving(
        "envoy", in_cvm, client, "zz" * 16
    )


async def test_pipelined_requests_through_envoy_keep_their_order(in_cvm: InCvm) -> None:
    require_envoy()
    await conformance.test_pipelined_requests_keep_their_order_around_the_attestation_answer(
        "envoy", in_cvm
    )


async def test_outside_a_cvm_envoy_answers_404_and_does_not_route_the_path(
    client: aiohttp.ClientSession,
) -> None:
    require_envoy()
    await conformance.test_outside_a_cvm_the_path_is_a_404_saying_why_and_is_not_routed(
        "envoy", client
    )


def test_the_path_comes_before_every_app_and_the_https_redirect() -> None:
    cfg = config()
    snap = snapshot_of(cfg)
    for name, scheme in [("untrusted-http", "http"), ("untrusted-https", "https")]:
        routes = route_configuration(
            name, snap, cfg, scheme=scheme, https_port=443, attestation_cluster="att"
        )
        for host in routes["virtual_hosts"]:
            assert host["routes"][0] == attestation_route("att"), (name, host["name"])
    assert attestation_route("att")["match"] == {"path": ATTESTATION_PATH}  # any query


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [("203.0.113.9", "203.0.113.9"), ("198.51.100.1,203.0.113.9", "203.0.113.9"), ("", None)],
)
def test_the_quote_budget_counts_the_peer_envoy_saw(forwarded: str, client: str | None) -> None:
    """Envoy writes (untrusted peers) or appends (trusted proxies) the peer last."""
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    request = make_mocked_request("GET", ATTESTATION_PATH, headers=headers)
    assert forwarded_client(request) == (client or request.remote or "")
