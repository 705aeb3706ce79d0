"""The RA-TLS gate without sockets: the verdict cache per (replica, key), its expiry after
attestation.interval, key rotation, and how RA-TLS verdicts join the Attestor's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from router.attestation.ratls_cert import spki_der, spki_digest
from router.attestation.ratls_gate import RaTlsGate
from router.attestation.settings import AttestationConfig
from router.attestation.simsig import public_key_bytes
from router.discovery.records import parse_cvms
from router.discovery.settings import PhalaDiscoveryConfig
from router.models import AttestationVerdict, Replica
from router.simulator.quotes import simulated_os_measurement
from router.simulator.ratls import Behaviour, Identity, SimCa, ra_tls_certificate

ME = Identity("ab" * 20, "11" * 20, "cd" * 32)
QUOTE_KEY = ec.generate_private_key(ec.SECP256R1())
REPLICA = Replica(
    id=ME.instance_id, url="https://r1.test:8443", scheme="https", host="r1.test", port=8443
)


def leaf(behaviour: Behaviour = "ok") -> bytes:
    other = ec.generate_private_key(ec.SECP256R1()) if behaviour == "other_key" else None
    _, cert = ra_tls_certificate(ME, QUOTE_KEY, SimCa(), behaviour=behaviour, bind_to=other)
    return cert.public_bytes(serialization.Encoding.DER)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def gate(mode: str = "off") -> tuple[RaTlsGate, list[AttestationVerdict], Clock]:
    cfg = AttestationConfig(
        mode=mode,
        connection="ra-tls",
        verifier="insecure-simulator",
        interval=60,
        app_id=ME.app_id,
        allowed_compose_hashes=(ME.compose_hash,),
        os_measurements=(simulated_os_measurement(),),
    )
    published: list[AttestationVerdict] = []
    clock = Clock()
    ratls = RaTlsGate(
        cfg, None, published.append, clock=clock, wall_clock=lambda: 1_800_000_000.0,
        trusted_simulator_keys=frozenset({public_key_bytes(QUOTE_KEY.public_key())}),
    )  # fmt: skip
    ratls.update_replicas([REPLICA])
    return ratls, published, clock


async def test_a_key_is_verified_once_per_interval_and_again_after_rotation() -> None:
    ratls, published, clock = gate()
    first = leaf()
    assert await ratls.check("R1.test", 8443, first) is None
    assert await ratls.check("r1.test", 8443, first) is None
    assert ratls.verifications == 1
    assert [v.ok for v in published] == [True]
    clock.now += 61  # the cached verdict is older than attestation.interval
    assert await ratls.check("r1.test", 8443, first) is None
    assert ratls.verifications == 2
    assert await ratls.check("r1.test", 8443, leaf()) is None  # a rotated key: verified again
    assert ratls.verifications == 3


def spki_of(der: bytes) -> str:
    return spki_digest(spki_der(x509.load_der_x509_certificate(der)))


async def test_the_pin_follows_the_key_verified_last_and_a_failure_removes_it() -> None:
    """What Envoy pins (docs/envoy.md): the key of the last passing verification."""
    ratls, _, _ = gate()
    changes: list[dict[str, str]] = []
    ratls.pin_listeners.append(lambda: changes.append(dict(ratls.pins)))
    first, rotated = leaf(), leaf()
    assert await ratls.check("r1.test", 8443, first) is None
    assert await ratls.check("r1.test", 8443, first) is None  # same key: no change
    assert changes == [{ME.instance_id: spki_of(first)}]
    assert await ratls.check("r1.test", 8443, rotated) is None
    assert ratls.pins == {ME.instance_id: spki_of(rotated)}
    assert await ratls.check("r1.test", 8443, leaf("other_key")) is not None
    assert ratls.pins == {}  # refused: Envoy must reach it by no key
    assert len(changes) == 3


async def test_a_failure_is_published_at_once_and_never_cached() -> None:
    ratls, published, _ = gate()
    bad = leaf("other_key")
    assert await ratls.check("r1.test", 8443, bad) == "ra_tls_key_binding_mismatch"
    assert await ratls.check("r1.test", 8443, bad) == "ra_tls_key_binding_mismatch"
    assert ratls.verifications == 2
    assert published[-1].reason == "ra_tls_key_binding_mismatch"
    assert await ratls.check("elsewhere.test", 8443, leaf()) == "ra_tls_unknown_replica"


async def test_a_standing_ra_tls_failure_overrides_the_attestors_pass_until_a_new_pass() -> None:
    ratls, published, _ = gate(mode="fresh")
    attestor_pass = AttestationVerdict(replica_id=REPLICA.id, ok=True, reason="ok", at=1.0)
    ratls.attestor_verdict(attestor_pass)
    assert published[-1] is attestor_pass
    await ratls.check("r1.test", 8443, leaf("plain"))
    assert published[-1].reason == "ra_tls_no_attestation"
    ratls.attestor_verdict(attestor_pass)  # the next round's pass does not clear it
    assert published[-1].reason == "ra_tls_no_attestation"
    await ratls.check("r1.test", 8443, leaf())
    assert published[-1] is attestor_pass


async def test_a_changed_replica_record_drops_its_cached_verdicts() -> None:
    ratls, _, _ = gate()
    first = leaf()
    await ratls.check("r1.test", 8443, first)
    ratls.update_replicas([replace(REPLICA, compose_hash=ME.compose_hash)])
    await ratls.check("r1.test", 8443, first)
    assert ratls.verifications == 2


async def test_with_a_pinned_kms_root_the_key_provider_must_name_it(tmp_path: Path) -> None:
    root, other = SimCa("pinned KMS root"), SimCa("another KMS")
    (tmp_path / "root.pem").write_bytes(root.pem())
    cfg = AttestationConfig(
        connection="ra-tls",
        verifier="insecure-simulator",
        app_id=ME.app_id,
        allowed_compose_hashes=(ME.compose_hash,),
        allowed_key_providers=("kms", "local"),
        kms_root=tmp_path / "root.pem",
    )
    ratls = RaTlsGate(
        cfg, None, lambda _: None,
        trusted_simulator_keys=frozenset({public_key_bytes(QUOTE_KEY.public_key())}),
    )  # fmt: skip
    ratls.update_replicas([REPLICA])

    def der(ca: SimCa) -> bytes:
        _, cert = ra_tls_certificate(ME, QUOTE_KEY, ca)
        return cert.public_bytes(serialization.Encoding.DER)

    assert await ratls.check("r1.test", 8443, der(root)) is None
    assert await ratls.check("r1.test", 8443, der(other)) == "ra_tls_kms_not_allowed"


def test_discovery_with_tls_passthrough_addresses_the_cvm_port() -> None:
    """`discovery.phala.tls_passthrough`: <instance_id>-<port>s.<base>, TLS ends in the CVM."""
    record = {
        "app_id": ME.app_id, "instance_id": ME.instance_id, "vm_uuid": "u1",
        "status": "running", "in_progress": False,
        "gateway": {"base_domain": "dstack-prod5.phala.network"},
        "endpoints": [{"instance": f"https://{ME.instance_id}-8443.dstack-prod5.phala.network"}],
    }  # fmt: skip
    cfg = PhalaDiscoveryConfig(app_id=ME.app_id, port=8443, tls_passthrough=True)
    (replica,) = parse_cvms([record], cfg)
    assert replica.url == f"https://{ME.instance_id}-8443s.dstack-prod5.phala.network"
    assert replica.port == 443
