"""TLS on the xDS port (`proxy.envoy.xds_tls`): an Envoy elsewhere subscribes over mutual
TLS and serves the same endpoints; a client without a certificate gets nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from router.errors import ConfigError
from router.proxy.envoy.bootstrap import XdsClientTLS, ads_bootstrap, main
from tests.envoy_support import require_envoy
from tests.support import eventually, free_port, running_replica, running_router
from tests.test_envoy_engine import envoy_addresses, envoy_config


def pems(tmp_path: Path) -> dict[str, str]:
    """A CA, the router's certificate for 127.0.0.1, and an Envoy's client certificate."""
    ca = trustme.CA()
    files = {"ca": tmp_path / "ca.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for name, cert in (("server", ca.issue_cert("127.0.0.1")), ("client", ca.issue_cert("edge"))):
        files[f"{name}_cert"] = tmp_path / f"{name}.pem"
        files[f"{name}_key"] = tmp_path / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(files[f"{name}_cert"]))
        cert.private_key_pem.write_to_path(str(files[f"{name}_key"]))
    return {k: str(v) for k, v in files.items()}


def test_the_bootstrap_checks_the_router_and_shows_its_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = pems(tmp_path)
    argv = ["--xds", "127.0.0.1:18000", "--node-id", "edge", "--xds-ca", files["ca"]]
    main([*argv, "--client-cert", files["client_cert"], "--client-key", files["client_key"]])
    cluster = json.loads(capsys.readouterr().out)["static_resources"]["clusters"][0]
    common = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    sans = common["validation_context"]["match_typed_subject_alt_names"]
    assert sans == [{"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}]
    assert common["tls_certificates"][0]["certificate_chain"]["filename"] == files["client_cert"]
    with pytest.raises(SystemExit):
        main([*argv[:4], "--client-cert", files["client_cert"]])  # no key, no CA


def test_xds_tls_needs_the_xds_port(tmp_path: Path) -> None:
    from router.config import parse_config

    files = pems(tmp_path)
    tls = {"cert_file": files["server_cert"], "key_file": files["server_key"]}
    config = envoy_config([("a", "http://127.0.0.1:1")], proxy={"envoy": {"xds_tls": tls}})
    with pytest.raises(ConfigError, match=r"xds_tls needs proxy\.envoy\.xds_listen"):
        parse_config(config, {})


async def subscribe(stream: Any) -> None:
    """Send a request and wait for an answer on an ADS stream (raises when it fails)."""
    await stream.write(b"")
    await stream.read()


async def test_an_envoy_subscribes_over_mutual_tls_and_a_client_without_a_cert_cannot(
    tmp_path: Path,
) -> None:
    require_envoy()
    from router.proxy.envoy.process import EnvoyProcess
    from router.proxy.envoy.settings import EnvoyConfig

    files = pems(tmp_path)
    xds = f"127.0.0.1:{free_port()}"
    tls: dict[str, Any] = {
        "cert_file": files["server_cert"],
        "key_file": files["server_key"],
        "client_ca_file": files["ca"],
    }
    async with running_replica("a") as a:
        config = envoy_config(
            [("a", f"http://127.0.0.1:{a.port}")],
            proxy={"envoy": {"xds_listen": xds, "xds_tls": tls}},
        )
        async with running_router(config) as router:
            # Without a client certificate the handshake fails: no resources.
            credentials = grpc.ssl_channel_credentials(Path(files["ca"]).read_bytes())
            async with grpc.aio.secure_channel(xds, credentials) as channel:
                call = channel.stream_stream(
                    "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
                    "StreamAggregatedResources"
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await subscribe(call(timeout=5))
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # no TLS session

            client = XdsClientTLS(files["ca"], None, files["client_cert"], files["client_key"])
            path = tmp_path / "bootstrap.json"
            path.write_text(
                json.dumps(ads_bootstrap("127.0.0.1:0", xds, node_id="edge", tls=client))
            )
            second = EnvoyProcess(EnvoyConfig(), path, drain_seconds=1)
            await second.start()
            try:

                async def holds() -> bool:
                    addresses = await envoy_addresses(router, second.admin_url)
                    return addresses == {f"127.0.0.1:{a.port}"}

                await eventually(holds, timeout=10)
            finally:
                await second.stop(1.0)
