"""The RA-TLS gate (`attestation.connection: ra-tls`): the control-plane side of attested
connections.

The data plane and the health checker call `check(host, port, leaf_der)` (a plain callable
handed to them by the composition root; they never import this module) on every new
upstream TLS connection before writing a byte. The gate verifies the leaf (`ratls.py`),
caches a passing verdict per (replica, SPKI digest) for at most `attestation.interval`, and
publishes verdicts through the same sink as the Attestor: a failure marks the replica
`unattested: ra_tls_<reason>` at once. A certificate with another key misses the cache and is
verified again (key rotation); nothing is cached for a failure.

With an attestation mode on too, the gate joins both sources: a standing RA-TLS failure
overrides the Attestor's pass until a connection to that replica verifies again; otherwise
the Attestor's verdict is what admits. With `connection: ra-tls` alone, the RA-TLS verdict
admits (health probes make a verified connection each round, so it stays fresh).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial

from cryptography import x509

from router.attestation import simsig
from router.attestation.collateral import CollateralStore
from router.attestation.quote import parse_td_quote
from router.attestation.ratls import (
    base_expectation,
    failed,
    ra_tls_reason,
    verify_attestation,
)
from router.attestation.ratls_cert import read_attestation, spki_der, spki_digest
from router.attestation.settings import AttestationConfig
from router.errors import AttestationError
from router.models import AttestationVerdict, Replica

log = logging.getLogger(__name__)

VerdictSink = Callable[[AttestationVerdict], None]


def kms_root_id(cfg: AttestationConfig) -> str | None:
    """Hex of the pinned KMS root CA's SPKI DER: what dstack's key-provider event names."""
    if cfg.kms_root is None:
        return None
    return spki_der(x509.load_pem_x509_certificate(cfg.kms_root.read_bytes())).hex()


class RaTlsGate:
    def __init__(
        self,
        cfg: AttestationConfig,
        app_id: str | None,
        sink: VerdictSink,
        *,
        collateral: CollateralStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        trusted_simulator_keys: frozenset[bytes] = frozenset(),
    ) -> None:
        if cfg.verifier == "insecure-simulator":
            log.warning(
                "attestation.verifier is insecure-simulator: RA-TLS certificates with quotes "
                "signed by the SIMULATOR's key are accepted; never use it in production."
            )
        self._cfg = cfg
        self._app_id = app_id
        self._sink = sink
        self._collateral = collateral or CollateralStore(
            cfg.collateral, wall_clock=wall_clock, timeout=cfg.timeout
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self._trusted_keys = trusted_simulator_keys
        self._kms_root_id = kms_root_id(cfg)
        self._by_address: dict[tuple[str, int], Replica] = {}
        self._replicas: dict[str, Replica] = {}
        self._cache: dict[tuple[str, str], AttestationVerdict] = {}
        self._ratls: dict[str, AttestationVerdict] = {}
        self._attestor: dict[str, AttestationVerdict] = {}
        self.verifications = 0  # full verifications run (cache misses), for tests and metrics
        # Replica id -> SPKI digest (hex) of the key verified last: what a data plane that
        # cannot verify quotes itself (Envoy) pins. Listeners hear of every change.
        self.pins: dict[str, str] = {}
        self.pin_listeners: list[Callable[[], None]] = []

    # -- inputs ---------------------------------------------------------------------------

    def update_replicas(self, replicas: Sequence[Replica]) -> None:
        """Discovery's set. A replica whose record changed (compose hash, URL) loses its
        cached verdicts: the expectation they were made against may no longer hold."""
        current = {r.id: r for r in replicas if r.is_candidate}
        changed = {rid for rid, r in current.items() if self._replicas.get(rid) not in (None, r)}
        gone = set(self._replicas) - set(current)
        self._cache = {k: v for k, v in self._cache.items() if k[0] not in changed | gone}
        for rid in gone:
            self._ratls.pop(rid, None)
            self._attestor.pop(rid, None)
        for rid in changed | gone:
            self._pin(rid, None)
        self._replicas = current
        self._by_address = {(r.host.lower(), r.port): r for r in current.values()}

    def attestor_verdict(self, verdict: AttestationVerdict) -> None:
        """The Attestor's sink when both run: joined with the RA-TLS verdict."""
        self._attestor[verdict.replica_id] = verdict
        self._forward(verdict.replica_id)

    # -- the connect hook -------------------------------------------------------------------

    async def check(self, host: str, port: int, leaf_der: bytes | None) -> str | None:
        """None when the peer is the attested replica at host:port, else the reason code."""
        replica = self._by_address.get((host.lower().rstrip("."), port))
        if replica is None:
            return ra_tls_reason("unknown_replica")
        try:
            verdict = await self.verify(replica, leaf_der)
        except Exception:  # a bug must refuse the connection, never admit it
            log.exception("replica %s: RA-TLS check failed unexpectedly; refusing", replica.id)
            return ra_tls_reason("internal_error")
        return None if verdict.ok else verdict.reason

    async def verify(self, replica: Replica, leaf_der: bytes | None) -> AttestationVerdict:
        """The verdict for this leaf of this replica: cached while younger than the interval."""
        now, wall = self._clock(), self._wall_clock()
        try:
            if leaf_der is None:
                raise AttestationError("no_tls", "the connection is not TLS: nothing to verify")
            found = read_attestation(leaf_der)
        except AttestationError as exc:
            return self._record(failed(replica.id, exc, now, wall))
        key = (replica.id, spki_digest(found.spki_der))
        cached = self._cache.get(key)
        if cached is not None and now - cached.at < self._cfg.interval:
            self._pin(replica.id, key[1])
            return cached
        self.verifications += 1
        expect = base_expectation(
            self._cfg, self._app_id, replica, self._replicas.values(), self._kms_root_id
        )
        try:
            collateral = None
            if not simsig.is_simulated(parse_td_quote(found.quote).signature_data):
                collateral = await self._collateral.get(found.quote)
        except AttestationError as exc:
            return self._record(failed(replica.id, exc, now, wall))
        run = partial(
            verify_attestation, found, expect, replica_id=replica.id, collateral=collateral,
            now_unix=int(wall), at=now, verifier=self._cfg.verifier,
            trusted_simulator_keys=self._trusted_keys,
        )  # fmt: skip
        # dcap-qvl takes a millisecond or two: off the event loop; a simulated quote is cheap.
        verdict = run() if collateral is None else await asyncio.to_thread(run)
        self._cache.pop(key, None)
        if verdict.ok:
            self._cache[key] = verdict
            self._pin(replica.id, key[1])
        return self._record(verdict)

    def _pin(self, replica_id: str, digest: str | None) -> None:
        """The key to pin for a replica (None: none, it is not attested by any key)."""
        if self.pins.get(replica_id) == digest:
            return
        if digest is None:
            self.pins.pop(replica_id, None)
        else:
            self.pins[replica_id] = digest
        for listener in self.pin_listeners:
            listener()

    # -- publishing -----------------------------------------------------------------------

    def _record(self, verdict: AttestationVerdict) -> AttestationVerdict:
        rid = verdict.replica_id
        if not verdict.ok:
            self._pin(rid, None)
        previous = self._ratls.get(rid)
        self._ratls[rid] = verdict
        if previous is None or (previous.ok, previous.reason) != (verdict.ok, verdict.reason):
            level = logging.INFO if verdict.ok else logging.WARNING
            log.log(
                level,
                "replica %s: RA-TLS %s%s",
                rid,
                "verified" if verdict.ok else f"REFUSED: {verdict.reason}",
                f" ({verdict.detail})" if verdict.detail else "",
            )
        if rid in self._replicas:
            self._forward(rid)
        return verdict

    def _forward(self, rid: str) -> None:
        ratls, attestor = self._ratls.get(rid), self._attestor.get(rid)
        out: AttestationVerdict | None
        if ratls is not None and not ratls.ok:
            out = ratls
        elif self._cfg.enabled:
            out = attestor
        else:
            out = ratls
        if out is not None:
            self._sink(out)
