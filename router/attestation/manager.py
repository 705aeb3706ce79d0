"""The attestation gate: attest replicas on schedule and report verdicts to the reconciler.

`Attestor.run()` re-attests every replica each `interval`, and at once when discovery
reports a new instance or a changed compose hash. Each verdict goes to `sink` (the
reconciler's `set_verdict`), which removes a failing replica from routing before the next
request; a passing verdict admits it for `max_age` (checked by the snapshot builder).

Verification is CPU work (about a millisecond or two in dcap-qvl), so it runs in a worker
thread; fetches are bounded by `concurrency`. A verified quote is remembered by
(replica, quote digest), so an unchanged stored quote (cloud, guest-agent) is not
re-verified every round; fresh quotes never repeat.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import aiohttp
import httpx

from router.attestation import fetch
from router.attestation.collateral import CollateralStore
from router.attestation.quote import NONCE_LEN, fresh_report_data, quote_digest
from router.attestation.settings import AttestationConfig
from router.attestation.verify import Evidence, Expectation, is_simulated_quote, verify_evidence
from router.errors import AttestationError
from router.models import AttestationVerdict, Replica

log = logging.getLogger(__name__)

VerdictSink = Callable[[AttestationVerdict], None]
# How long an ok verdict for an unchanged quote is reused without re-verifying it.
VERIFIED_QUOTE_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class _Remembered:
    verdict: AttestationVerdict
    expectation: Expectation
    verified_at: float


class Attestor:
    def __init__(
        self,
        cfg: AttestationConfig,
        app_id: str | None,
        sink: VerdictSink,
        *,
        session: aiohttp.ClientSession | None = None,
        cloud: httpx.AsyncClient | None = None,
        collateral: CollateralStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        nonce: Callable[[int], bytes] = secrets.token_bytes,
        trusted_simulator_keys: frozenset[bytes] = frozenset(),
    ) -> None:
        if cfg.mode == "cloud" and (cloud is None or not app_id):
            raise ValueError("attestation.mode cloud needs the Cloud API client and an app_id")
        if cfg.mode in ("guest-agent", "fresh") and session is None:
            raise ValueError(f"attestation.mode {cfg.mode} needs an aiohttp session")
        if cfg.verifier == "insecure-simulator":
            log.warning(
                "attestation.verifier is insecure-simulator: quotes signed by the SIMULATOR's "
                "key are accepted. This proves nothing about real TDX hardware; never use it "
                "in production."
            )
        self._cfg = cfg
        self._app_id = app_id
        self._sink = sink
        self._session = session
        self._cloud = cloud
        self._collateral = collateral or CollateralStore(
            cfg.collateral, wall_clock=wall_clock, timeout=cfg.timeout
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self._nonce = nonce
        self._trusted_keys = trusted_simulator_keys
        self._replicas: dict[str, Replica] = {}
        self._seen_compose: dict[str, str | None] = {}
        self._last_attempt: dict[str, float] = {}
        self._due: set[str] = set()
        self._remembered: dict[tuple[str, str], _Remembered] = {}
        self._verdicts: dict[str, AttestationVerdict] = {}
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(cfg.concurrency)
        self.errors = 0  # unexpected failures of a whole round (bugs), for metrics

    # -- inputs ---------------------------------------------------------------------------

    @property
    def verdicts(self) -> Mapping[str, AttestationVerdict]:
        return self._verdicts

    def update_replicas(self, replicas: Sequence[Replica]) -> None:
        """Discovery's current set: new instances and changed compose hashes attest now."""
        current = {r.id: r for r in replicas if r.is_candidate}
        for replica_id, replica in current.items():
            if replica_id not in self._replicas:
                self._due.add(replica_id)
            elif self._seen_compose.get(replica_id) != replica.compose_hash:
                log.info(
                    "replica %s: compose hash changed to %s; re-attesting",
                    replica_id,
                    replica.compose_hash,
                )
                self._due.add(replica_id)
            self._seen_compose[replica_id] = replica.compose_hash
        for gone in set(self._replicas) - set(current):
            self._forget(gone)
        self._replicas = current
        if self._due:
            self._wake.set()

    def _forget(self, replica_id: str) -> None:
        self._seen_compose.pop(replica_id, None)
        self._last_attempt.pop(replica_id, None)
        self._verdicts.pop(replica_id, None)
        self._due.discard(replica_id)
        for key in [k for k in self._remembered if k[0] == replica_id]:
            del self._remembered[key]

    # -- schedule -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the clients this attestor was given (it owns them once given)."""
        if self._session is not None:
            await self._session.close()
        if self._cloud is not None:
            await self._cloud.aclose()

    async def run(self) -> None:
        """Attest what is due, then sleep until the next replica is due or discovery wakes us."""
        if not self._cfg.enabled:
            return
        while True:
            now = self._clock()
            due = self._due | {
                rid
                for rid in self._replicas
                if now - self._last_attempt.get(rid, -float("inf")) >= self._cfg.interval
            }
            self._due.clear()
            self._wake.clear()
            if due:
                try:
                    await self.attest_now(sorted(due))
                except Exception:
                    # A bug must not end attestation for good: log it, count it, retry later.
                    self.errors += 1
                    log.exception("attestation round failed unexpectedly; retrying next round")
            wait = self._next_due_in()
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _next_due_in(self) -> float | None:
        if self._due:
            return 0.0
        if not self._replicas:
            return None
        now = self._clock()
        soonest = min(self._last_attempt.get(r, now) for r in self._replicas)
        return max(0.0, soonest + self._cfg.interval - now)

    async def attest_now(
        self, replica_ids: Iterable[str] | None = None
    ) -> list[AttestationVerdict]:
        """Attest the given replicas (default: all) at once; publish and return the verdicts."""
        ids = list(self._replicas) if replica_ids is None else list(replica_ids)
        targets = [self._replicas[i] for i in ids if i in self._replicas]
        if not targets or not self._cfg.enabled:
            return []
        cloud_found: dict[str, Evidence | AttestationError] | AttestationError | None = None
        if self._cfg.mode == "cloud":
            cloud_found = await self._fetch_cloud()

        async def attest_and_publish(replica: Replica) -> AttestationVerdict:
            # Publish each verdict as soon as it is known: a failing replica must not keep
            # traffic while a slow one in the same round runs into its timeout.
            verdict = await self._attest(replica, cloud_found)
            self._publish(verdict)
            return verdict

        return list(await asyncio.gather(*(attest_and_publish(r) for r in targets)))

    # -- one replica --------------------------------------------------------------------

    async def _fetch_cloud(self) -> dict[str, Evidence | AttestationError] | AttestationError:
        assert self._cloud is not None
        assert self._app_id
        try:
            async with asyncio.timeout(self._cfg.timeout):
                return await fetch.fetch_cloud(self._cloud, self._app_id)
        except TimeoutError:
            return AttestationError("fetch_failed", "Cloud API: timed out")
        except AttestationError as exc:
            return exc

    async def _attest(
        self,
        replica: Replica,
        cloud_found: dict[str, Evidence | AttestationError] | AttestationError | None,
    ) -> AttestationVerdict:
        async with self._limit:
            self._last_attempt[replica.id] = self._clock()
            nonce = self._nonce(NONCE_LEN) if self._cfg.mode == "fresh" else None
            expectation = self._expectation(replica, nonce)
            try:
                evidence = await self._fetch(replica, cloud_found, nonce)
                remembered = self._remembered.get((replica.id, quote_digest(evidence.quote)))
                if (
                    remembered is not None
                    and remembered.expectation == expectation
                    and self._clock() - remembered.verified_at < VERIFIED_QUOTE_TTL
                ):
                    return replace(remembered.verdict, at=self._clock())
                collateral = None
                if not is_simulated_quote(evidence.quote):
                    collateral = await self._collateral.get(evidence.quote)
            except AttestationError as exc:
                return self._failed(replica, exc)
            verdict = await asyncio.to_thread(
                verify_evidence,
                evidence,
                expectation,
                replica_id=replica.id,
                collateral=collateral,
                now_unix=int(self._wall_clock()),
                at=self._clock(),
                verifier=self._cfg.verifier,
                mode=self._cfg.mode,
                trusted_simulator_keys=self._trusted_keys,
            )
            if verdict.ok and verdict.quote_digest:
                self._remembered[(replica.id, verdict.quote_digest)] = _Remembered(
                    verdict, expectation, verdict.at
                )
            return verdict

    async def _fetch(
        self,
        replica: Replica,
        cloud_found: dict[str, Evidence | AttestationError] | AttestationError | None,
        nonce: bytes | None,
    ) -> Evidence:
        if self._cfg.mode == "cloud":
            if isinstance(cloud_found, AttestationError):
                raise cloud_found
            return fetch.cloud_evidence_for(replica, cloud_found or {})
        assert self._session is not None
        try:
            async with asyncio.timeout(self._cfg.timeout):
                if self._cfg.mode == "guest-agent":
                    return await fetch.fetch_guest_agent(self._session, replica, self._cfg.timeout)
                assert nonce is not None
                return await fetch.fetch_fresh(
                    self._session, replica, self._cfg.fresh, nonce, self._cfg.timeout
                )
        except TimeoutError:
            raise AttestationError(
                "fetch_failed", f"no answer within attestation.timeout ({self._cfg.timeout:g}s)"
            ) from None

    def _expectation(self, replica: Replica, nonce: bytes | None) -> Expectation:
        if self._cfg.allowed_compose_hashes:
            allowed = frozenset(self._cfg.allowed_compose_hashes)
        else:
            # The compose hashes discovery (the Cloud API) reports for this app.
            allowed = frozenset(
                r.compose_hash.lower() for r in self._replicas.values() if r.compose_hash
            )
        return Expectation(
            app_id=self._app_id or replica.app_id,
            instance_id=fetch.instance_id_of(replica),
            allowed_compose_hashes=allowed,
            allowed_tcb_statuses=frozenset(self._cfg.allowed_tcb_statuses),
            allowed_os_image_hashes=frozenset(self._cfg.allowed_os_image_hashes),
            report_data=fresh_report_data(nonce) if nonce is not None else None,
        )

    def _source_outage(
        self, verdict: AttestationVerdict, previous: AttestationVerdict | None
    ) -> bool:
        """A stored quote (cloud, guest-agent) that could not be fetched, or collateral that
        could not be had, says nothing new about a replica that passed: its verdict stands
        until max_age. In fresh mode the replica itself must answer, so silence fails."""
        if previous is None or not previous.ok or verdict.ok:
            return False
        if verdict.reason == "no_collateral":
            return True
        return verdict.reason == "fetch_failed" and self._cfg.mode != "fresh"

    def _failed(self, replica: Replica, exc: AttestationError) -> AttestationVerdict:
        return AttestationVerdict(
            replica_id=replica.id,
            ok=False,
            reason=exc.reason,
            at=self._clock(),
            detail=exc.detail,
            mode=self._cfg.mode,
        )

    def _publish(self, verdict: AttestationVerdict) -> None:
        if verdict.replica_id not in self._replicas:
            return  # removed while we were attesting it
        previous = self._verdicts.get(verdict.replica_id)
        if self._source_outage(verdict, previous):
            assert previous is not None
            log.warning(
                "replica %s: re-attestation could not run (%s: %s); keeping the passing "
                "verdict until attestation.max_age",
                verdict.replica_id,
                verdict.reason,
                verdict.detail,
            )
            verdict = replace(previous, detail=f"last attempt: {verdict.reason}: {verdict.detail}")
        self._verdicts[verdict.replica_id] = verdict
        if previous is None or (previous.ok, previous.reason) != (verdict.ok, verdict.reason):
            level = logging.INFO if verdict.ok else logging.WARNING
            log.log(
                level,
                "replica %s: attestation %s%s",
                verdict.replica_id,
                "passed" if verdict.ok else f"FAILED: {verdict.reason}",
                f" ({verdict.detail})" if verdict.detail else "",
            )
        self._sink(verdict)
