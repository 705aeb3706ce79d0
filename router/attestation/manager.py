"""The attestation gate: attest replicas on schedule and report verdicts to the reconciler.

`Attestor.run()` re-attests every replica each `interval`, and at once when discovery
reports a new instance, a changed compose hash, URL or node (a verdict is tied to the
endpoint it was made for). Each verdict goes to `sink` (the reconciler's `set_verdict`),
which removes a failing replica from routing before the next request; a passing verdict
admits it for `max_age` (checked by the snapshot builder).

Every round verifies again (about a millisecond or two in dcap-qvl, in a worker thread):
only collateral is cached, so expired collateral or a TCB downgrade is noticed at the next
round. The quote is parsed before anything else: bytes that are not a TDX quote fail at
once. Only network failures reaching the Cloud API or the PCCS count as a source outage
(a passing verdict then stands until max_age), and never in fresh mode, where a failed
fetch is retried with backoff within the interval before a passing replica is removed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace

import aiohttp
import httpx

from router.attestation import fetch, simsig
from router.attestation.claims import Checks
from router.attestation.collateral import CollateralStore, quote_fmspc
from router.attestation.quote import NONCE_LEN, fresh_report_data, parse_td_quote
from router.attestation.rules import (
    APP_KEY_PREFIX,
    OUTAGE_REASONS,
    Endpoint,
    endpoint_of,
    warn_unchecked,
)
from router.attestation.settings import AttestationConfig
from router.attestation.verify import Evidence, Expectation, verify_evidence
from router.errors import AttestationError
from router.models import AttestationVerdict, Replica

log = logging.getLogger(__name__)

VerdictSink = Callable[[AttestationVerdict], None]


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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        fresh_token: str | None = None,
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
        warn_unchecked(cfg, app_id)
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
        self._sleep = sleep
        self._fresh_token = fresh_token
        self._replicas: dict[str, Replica] = {}
        self._seen: dict[str, Endpoint] = {}
        # Platform (FMSPC) of each replica's last passing quote, and of its latest attempt:
        # a PCCS outage only excuses a replica whose platform has not changed.
        self._passed_fmspc: dict[str, str] = {}
        self._tried_fmspc: dict[str, str] = {}
        self._last_attempt: dict[str, float] = {}
        self._due: set[str] = set()
        self._verdicts: dict[str, AttestationVerdict] = {}
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(cfg.concurrency)
        self.errors = 0  # unexpected failures of a whole round (bugs), for metrics

    # -- inputs ---------------------------------------------------------------------------

    @property
    def verdicts(self) -> Mapping[str, AttestationVerdict]:
        return self._verdicts

    def update_replicas(self, replicas: Sequence[Replica]) -> None:
        """Discovery's current set: new instances, and a changed compose hash, URL or node,
        attest now. A verdict made for another endpoint stops admitting at once."""
        current = {r.id: r for r in replicas if r.is_candidate}
        moved = []
        for replica_id, replica in current.items():
            seen = self._seen.get(replica_id)
            if replica_id not in self._replicas:
                self._due.add(replica_id)
            elif seen != endpoint_of(replica):
                log.info(
                    "replica %s: compose hash, URL or node changed (%s -> %s); re-attesting",
                    replica_id,
                    seen,
                    endpoint_of(replica),
                )
                self._due.add(replica_id)
                if seen is not None and seen[1:] != endpoint_of(replica)[1:]:
                    moved.append(replica_id)  # the verdict was made for another endpoint
            self._seen[replica_id] = endpoint_of(replica)
        for gone in set(self._replicas) - set(current):
            self._forget(gone)
        self._replicas = current
        for replica_id in moved:
            previous = self._verdicts.get(replica_id)
            if previous is not None and previous.ok:
                self._publish(
                    self._failed(
                        current[replica_id],
                        AttestationError(
                            "endpoint_changed", "the URL or node changed; re-attesting"
                        ),
                    )
                )
        if self._due:
            self._wake.set()

    def _forget(self, replica_id: str) -> None:
        self._seen.pop(replica_id, None)
        self._passed_fmspc.pop(replica_id, None)
        self._tried_fmspc.pop(replica_id, None)
        self._last_attempt.pop(replica_id, None)
        self._verdicts.pop(replica_id, None)
        self._due.discard(replica_id)

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
            now = self._replicas.get(replica.id)
            if now is None or endpoint_of(now) == endpoint_of(replica):
                self._publish(verdict)  # else made for an old endpoint: a new round is due
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
            return AttestationError("cloud_api_unreachable", "Cloud API: timed out")
        except AttestationError as exc:
            return exc

    async def _attest(
        self,
        replica: Replica,
        cloud_found: dict[str, Evidence | AttestationError] | AttestationError | None,
    ) -> AttestationVerdict:
        verdict = await self._attempt(replica, cloud_found)
        previous = self._verdicts.get(replica.id)
        if self._cfg.mode != "fresh" or previous is None or not previous.ok:
            return verdict
        # Fresh mode: a replica that was passing is not removed for one lost fetch (anyone
        # can make its quote server busy): retry with backoff, within the interval.
        started = self._clock()
        delay = self._cfg.fresh.retry_backoff
        for _ in range(self._cfg.fresh.retries):
            if verdict.ok or verdict.reason != "fetch_failed":
                break
            if self._clock() - started + delay + self._cfg.timeout > self._cfg.interval:
                break
            log.info(
                "replica %s: fresh attestation failed (%s); retrying", replica.id, verdict.detail
            )
            await self._sleep(delay)
            delay *= 2
            verdict = await self._attempt(replica, cloud_found)
        return verdict

    async def _attempt(
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
                # Parse before anything else: bytes that are not a TDX quote fail here, and
                # never look like a collateral outage.
                quote = parse_td_quote(evidence.quote)
                collateral = None
                if not simsig.is_simulated(quote.signature_data):
                    self._tried_fmspc[replica.id] = quote_fmspc(evidence.quote)
                    collateral = await self._collateral.get(evidence.quote)
            except AttestationError as exc:
                return self._failed(replica, exc, expectation)
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
            if verdict.ok and replica.id in self._tried_fmspc:
                self._passed_fmspc[replica.id] = self._tried_fmspc[replica.id]
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
                    self._session,
                    replica,
                    self._cfg.fresh,
                    nonce,
                    self._cfg.timeout,
                    self._fresh_token,
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
        cfg = self._cfg
        return Expectation(
            app_id=self._app_id or cfg.app_id or replica.app_id,
            instance_id=fetch.instance_id_of(replica),
            allowed_compose_hashes=allowed,
            allowed_tcb_statuses=frozenset(cfg.allowed_tcb_statuses),
            allowed_os_image_hashes=frozenset(cfg.allowed_os_image_hashes),
            report_data=fresh_report_data(nonce) if nonce is not None else None,
            report_data_prefix=APP_KEY_PREFIX if cfg.mode == "guest-agent" else None,
            os_measurements=cfg.os_measurements,
            denied_advisories=frozenset(cfg.denied_advisories),
            allowed_key_providers=frozenset(cfg.allowed_key_providers),
            kms_ids=frozenset(cfg.kms_ids),
        )

    def _source_outage(
        self, verdict: AttestationVerdict, previous: AttestationVerdict | None
    ) -> bool:
        """The Cloud API or the PCCS unreachable says nothing new about a replica that passed
        (cloud, guest-agent): its verdict stands until max_age. Anything the replica or its
        agent answered, however wrong, counts; in fresh mode nothing keeps a pass."""
        if previous is None or not previous.ok or verdict.ok or self._cfg.mode == "fresh":
            return False
        if verdict.reason == "pccs_unreachable":
            # Collateral of the platform it passed on is cached; none for this quote means
            # the quote names another platform: new evidence we cannot check, not an outage.
            rid = verdict.replica_id
            passed = self._passed_fmspc.get(rid)
            return passed is not None and self._tried_fmspc.get(rid) == passed
        return verdict.reason in OUTAGE_REASONS

    def _failed(
        self, replica: Replica, exc: AttestationError, expectation: Expectation | None = None
    ) -> AttestationVerdict:
        return AttestationVerdict(
            replica_id=replica.id,
            ok=False,
            reason=exc.reason,
            at=self._clock(),
            detail=exc.detail,
            mode=self._cfg.mode,
            wall_at=self._wall_clock(),
            # What would have been checked, none reached: the quote never got that far.
            checks=Checks(expectation).result(exc.reason) if expectation else (),
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
