"""The RA-TLS commands.

`phala-router attested-tls` runs in the CVM next to the app: it serves an RA-TLS key from
dstack and relays plain bytes to the app. Exit codes: 0 stopped, 1 no key from dstack or
the port is taken, 2 bad arguments.

`phala-router verify https://HOST[:PORT]` runs anywhere: it verifies a dstack RA-TLS endpoint
(a router in a CVM, a replica's passthrough port, any app with dstack RA-TLS certificates)
and prints what was proven; with `--nonce` also a quote the server (a router in a CVM) makes
now for our nonce on the same session (`attestation/remote_nonce.py`). Exit codes: 0
verified; 1 no TLS session (unreachable, handshake failed); 2 bad arguments (e.g. a
measurements file that is not valid); 3 the session's attestation, or the nonce quote, does
not verify.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from router.cli_support import fail, run_async

if TYPE_CHECKING:
    from router.attestation.measurements import OsMeasurement
    from router.attestation.verify import Verifier
    from router.models import AttestationVerdict


def _measurements(path: str | None) -> tuple[OsMeasurement, ...]:
    """The entries of a measurements file; ValueError names what is wrong."""
    if path is None:
        return ()
    from router.attestation.measurements import OsMeasurement, read_measurements_file

    return tuple(OsMeasurement.model_validate(e) for e in read_measurements_file(Path(path)))


@click.command("verify")
@click.argument("url")
@click.option("--app-id", help="the 40-hex app id the quote must name")
@click.option("--instance-id", help="the 40-hex instance id the quote must name")
@click.option("--compose-hash", "compose_hashes", multiple=True, help="an allowed compose hash")
@click.option(
    "--measurements", "measurements_file", type=click.Path(dir_okay=False),
    help="os_measurements YAML/JSON: MRTD and RTMR0-2 must match one entry",
)  # fmt: skip
@click.option(
    "--key-provider", "key_providers", multiple=True, default=("kms",), show_default=True,
    type=click.Choice(["kms", "local", "local-sgx"]), help="allowed key providers",
)  # fmt: skip
@click.option("--collateral", "collateral_file", type=click.Path(dir_okay=False))
@click.option("--pccs-url", default="https://pccs.phala.network", show_default=True)
@click.option("--connect", "connect_host", help="dial this address instead of HOST (SNI stays)")
@click.option("--timeout", default=10.0, show_default=True)
@click.option(
    "--insecure-simulator-key", "simulator_keys", multiple=True,
    help="hex key of a local simulator whose quotes to accept (tests and demos only)",
)  # fmt: skip
@click.option(
    "--nonce", "with_nonce", is_flag=True,
    help="also ask /.well-known/phala-router/attestation for a quote made now for a fresh "
    "nonce, on the same TLS session, and verify it (a router in a CVM serves it)",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
def verify(
    url: str,
    app_id: str | None,
    instance_id: str | None,
    compose_hashes: tuple[str, ...],
    measurements_file: str | None,
    key_providers: tuple[str, ...],
    collateral_file: str | None,
    pccs_url: str,
    connect_host: str | None,
    timeout: float,
    simulator_keys: tuple[str, ...],
    with_nonce: bool,
    as_json: bool,
) -> None:
    """Connect, verify the RA-TLS certificate presented, print what it proves; with --nonce
    also a quote the server makes now for our nonce.

    Exit codes: 0 verified, 1 no TLS session, 2 bad arguments, 3 not verified."""
    from router.attestation import remote, remote_nonce
    from router.attestation.claims import Expectation
    from router.attestation.collateral import CollateralStore
    from router.attestation.settings import CollateralConfig
    from router.proxy.well_known import ATTESTATION_PATH

    try:
        endpoint = remote.Endpoint.parse(url)
        measurements = _measurements(measurements_file)
        keys = frozenset(bytes.fromhex(k) for k in simulator_keys)
        collateral_cfg = CollateralConfig(
            pccs_url=pccs_url, file=Path(collateral_file) if collateral_file else None
        )
    except ValueError as exc:
        fail(str(exc), remote.EXIT_USAGE)
    expect = Expectation(
        app_id=app_id.lower() if app_id else None,
        instance_id=instance_id.lower() if instance_id else None,
        allowed_compose_hashes=frozenset(h.lower() for h in compose_hashes) or None,
        os_measurements=measurements,
        allowed_key_providers=frozenset(key_providers),
    )

    verifier: Verifier = "insecure-simulator" if keys else "dcap"

    async def run() -> tuple[AttestationVerdict, AttestationVerdict | None]:
        answer = None
        try:
            if with_nonce:
                answer = await remote_nonce.ask_with_nonce(
                    endpoint, ATTESTATION_PATH, remote_nonce.new_nonce(), timeout, connect_host
                )
                leaf = answer.leaf
            else:
                leaf = await remote.fetch_leaf(endpoint, timeout, connect_host)
        except (OSError, TimeoutError) as exc:
            fail(f"{url}: no TLS session: {exc or 'timed out'}", remote.EXIT_UNREACHABLE)
        store = CollateralStore(collateral_cfg, timeout=timeout)
        verdict = await remote.verify_endpoint(
            leaf, expect, store, verifier=verifier, trusted_simulator_keys=keys
        )
        if answer is None:
            return verdict, None
        fresh = await remote_nonce.verify_nonce_answer(
            answer, expect, verdict, store, verifier=verifier, trusted_simulator_keys=keys
        )
        return verdict, fresh

    verdict, fresh = run_async(run)
    _report(url, verdict, fresh, as_json)


def _report(
    url: str, verdict: AttestationVerdict, fresh: AttestationVerdict | None, as_json: bool
) -> NoReturn:
    """Print what was proven (the certificate, then the nonce quote) and exit 0 or 3."""
    from router.attestation import remote, remote_nonce
    from router.attestation.report import verdict_to_dict

    if as_json:
        document = {"url": url, **verdict_to_dict(verdict)}
        if fresh is not None:
            document["fresh_quote"] = verdict_to_dict(fresh)
        click.echo(json.dumps(document, indent=2))
    else:
        lines = remote.proven(verdict, url)
        if fresh is not None:
            lines += remote_nonce.proven_fresh(fresh)
        click.echo("\n".join(lines))
    ok = verdict.ok and (fresh is None or fresh.ok)
    sys.exit(remote.EXIT_VERIFIED if ok else remote.EXIT_REFUSED)


@click.command("attested-tls")
@click.option("--listen", default="0.0.0.0:8443", show_default=True, help="the TLS port")
@click.option("--upstream", required=True, help="the app's plain HTTP HOST:PORT, e.g. app:8080")
@click.option("--renew", default="12h", show_default=True, help="get a new RA-TLS key this often")
@click.option(
    "--dstack-socket", default=None,
    help="dstack guest agent socket (default: DSTACK_SIMULATOR_ENDPOINT, /var/run/dstack.sock, ...)",
)  # fmt: skip
def attested_tls(listen: str, upstream: str, renew: str, dstack_socket: str | None) -> None:
    """Inside the CVM: end TLS with an RA-TLS key from dstack, relay plain bytes to the app.

    Exit codes: 0 stopped, 1 no key from dstack or the port is taken, 2 bad arguments."""
    import asyncio
    import logging

    from router.attested_tls import serve
    from router.settings_types import parse_duration, split_host_port

    try:
        listen_at, app_at = split_host_port(listen), split_host_port(upstream)
        every = parse_duration(renew)
    except ValueError as exc:
        fail(str(exc), 2)
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(serve(listen_at, app_at, endpoint=dstack_socket, renew=every))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # dstack unreachable, port taken: a message, not a traceback
        fail(f"attested-tls: {exc}", 1)
