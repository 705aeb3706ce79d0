"""Phala Cloud discovery: poll `GET /apps/{app_id}/cvms` and publish the replica set.

The Cloud API is control plane only (httpx, never on the request path). A bad minute of
the API must never drain the router: every failure keeps the last good set, is counted,
logged once per change of state, and backs off with jitter (honouring Retry-After on 429).
An empty list after a non-empty one is believed only after it repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from router.discovery.records import ParseResult, describe_changes, parse_cvms, parse_cvms_result
from router.discovery.settings import PhalaDiscoveryConfig
from router.errors import DiscoveryAuthError, DiscoveryError
from router.models import Replica

__all__ = ["PhalaDiscovery", "backoff_delay", "parse_cvms", "parse_retry_after"]

log = logging.getLogger(__name__)

RESULTS = ("ok", "error", "timeout", "auth", "invalid", "rate_limited")
MAX_RETRY_AFTER = 3600.0


class _Failure(DiscoveryError):
    """A failed pass, with its counter key and the server's Retry-After, if any."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class _AuthFailure(_Failure, DiscoveryAuthError):
    pass


def backoff_delay(
    failures: int, interval: float, max_backoff: float, rng: Callable[[], float]
) -> float:
    """Exponential from `interval`, capped, with "equal jitter" (half fixed, half random)
    so many routers that failed together do not retry together."""
    ceiling = min(max_backoff, interval * 2.0 ** max(0, failures - 1))
    return ceiling / 2 + ceiling / 2 * rng()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds (a number or an HTTP date), capped at an hour."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


class PhalaDiscovery:
    def __init__(
        self,
        cfg: PhalaDiscoveryConfig,
        publish: Callable[[Sequence[Replica]], None],
        *,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._cfg = cfg
        self._publish = publish
        self._environ = environ
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=cfg.timeout,
            headers={
                "X-Phala-Version": cfg.api_version,
                "Accept": "application/json",
                "User-Agent": "phala-router",
            },
            follow_redirects=False,
        )
        self._url = f"{cfg.api_url}/apps/{cfg.app_id}/cvms"
        self._wake = asyncio.Event()
        self._empty_seen = 0
        self._problems: tuple[str, ...] = ()
        self._state = "starting"
        # Read by metrics and the status page.
        self.refresh_results: Counter[str] = Counter(dict.fromkeys(RESULTS, 0))
        self.last_success: float | None = None  # wall clock
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self.next_delay = cfg.interval  # seconds until the loop's next pass
        self.replicas: tuple[Replica, ...] | None = None  # the last good set
        if cfg.api_url.startswith("http://") and not _is_local(self._url):
            log.warning("discovery.phala.api_url is plain http: the API key travels in clear")

    # -- public --------------------------------------------------------------------------

    async def first_pass(self) -> list[Replica]:
        """One pass; publishes and returns the set. Raises DiscoveryAuthError (naming the env
        var) when the key is missing or refused, DiscoveryError on any other failure. A failure
        is counted but not logged: the caller says what happens next (exit, or retry)."""
        return await self.refresh(log_failure=False)

    async def refresh(self, *, log_failure: bool = True) -> list[Replica]:
        """One pass now, with the same rules as the loop (counted, logged, published); returns
        the set in force afterwards, or raises like `first_pass`."""
        try:
            try:
                replicas = await self._pass()
            except _Failure:
                raise
            except Exception as exc:  # a bug must not stop discovery: count it, keep going
                log.exception("unexpected error during a Cloud API pass")
                raise _Failure("error", f"unexpected {type(exc).__name__}: {exc}") from exc
        except _Failure as exc:
            self.next_delay = self._record_failure(exc, log_failure=log_failure)
            raise
        self.next_delay = self._cfg.interval
        return list(replicas)

    async def run(self) -> None:
        """Refresh every interval until cancelled; the first pass runs at once if
        `first_pass()` has not succeeded yet."""
        delay = 0.0 if self.replicas is None else self._cfg.interval
        try:
            while True:
                await self._sleep(delay)
                with contextlib.suppress(DiscoveryError):
                    await self.refresh()
                delay = self.next_delay
        finally:
            await self.aclose()

    def refresh_soon(self) -> None:
        """Cut the current wait short (e.g. an operator asked for a refresh)."""
        self._wake.set()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> PhalaDiscovery:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def status(self) -> dict[str, Any]:
        """For the status page: how discovery is doing (never the API key)."""
        return {
            "source": "phala",
            "app_id": self._cfg.app_id,
            "api_url": self._cfg.api_url,
            "state": self._state,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "next_refresh_in": self.next_delay,
            "results": dict(self.refresh_results),
            "replicas": len(self.replicas) if self.replicas is not None else None,
            "skipped_records": list(self._problems),
        }

    @property
    def state(self) -> str:
        """`ok`, `starting`, or the kind of the last failure."""
        return self._state

    # -- one pass ------------------------------------------------------------------------

    async def _pass(self) -> tuple[Replica, ...]:
        started = self._clock()
        payload = await self._fetch()
        try:
            result = parse_cvms_result(payload, self._cfg)
        except DiscoveryError as exc:
            raise _Failure(
                "invalid", f"the Cloud API answered an invalid document: {exc}"
            ) from None
        self._log_problems(result)
        self.refresh_results["ok"] += 1
        self.last_success = self._wall_clock()
        self.last_error = None
        if self._state != "ok" and self.consecutive_failures:
            log.info(
                "Cloud API refresh recovered after %d failed attempt(s)", self.consecutive_failures
            )
        self._state = "ok"
        self.consecutive_failures = 0
        accepted = self._accept(result.replicas)
        log.debug("Cloud API pass took %.3fs: %d replicas", self._clock() - started, len(accepted))
        return accepted

    def _accept(self, replicas: tuple[Replica, ...]) -> tuple[Replica, ...]:
        """Apply the empty-set confirmation rule, log membership changes, publish."""
        previous = self.replicas
        if not replicas and previous:
            self._empty_seen += 1
            if self._empty_seen < self._cfg.empty_confirmations:
                log.warning(
                    "Cloud API lists no replica for app %s (%d/%d confirmations); keeping the "
                    "last good set of %d until it repeats",
                    self._cfg.app_id,
                    self._empty_seen,
                    self._cfg.empty_confirmations,
                    len(previous),
                )
                return previous
        self._empty_seen = 0
        for line in describe_changes(previous or (), replicas):
            log.info("%s", line)
        if previous is None:
            running = sum(1 for r in replicas if r.is_candidate)
            log.info(
                "discovered %d replica(s) of app %s, %d running",
                len(replicas),
                self._cfg.app_id,
                running,
            )
        self.replicas = replicas
        self._publish(replicas)
        return replicas

    async def _fetch(self) -> Any:
        key = self._environ.get(self._cfg.api_key_env, "").strip()
        env = self._cfg.api_key_env
        if not key:
            raise _AuthFailure(
                "auth", f"environment variable {env} is not set: put the Phala Cloud API key in it"
            )
        try:
            async with asyncio.timeout(self._cfg.timeout):
                response = await self._client.get(self._url, headers={"X-API-Key": key})
                body = await response.aread()
        except TimeoutError:
            raise _Failure("timeout", f"no answer within {self._cfg.timeout:g}s") from None
        except httpx.TimeoutException:
            raise _Failure("timeout", f"no answer within {self._cfg.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise _Failure("error", f"cannot reach {self._cfg.api_url}: {_describe(exc)}") from None
        status = response.status_code
        if status in (401, 403):
            raise _AuthFailure(
                "auth",
                f"the Cloud API refused the API key in ${env} (HTTP {status}: "
                f"{_detail(response)}); check the key and that it can read app {self._cfg.app_id}",
            )
        if status == 429:
            retry = parse_retry_after(response.headers.get("Retry-After"), self._wall_clock())
            raise _Failure("rate_limited", "rate limited (HTTP 429)", retry_after=retry)
        if status == 404:
            raise _Failure(
                "error", f"app {self._cfg.app_id} not found (HTTP 404: {_detail(response)})"
            )
        if status != 200:
            raise _Failure("error", f"HTTP {status}: {_detail(response)}")
        try:
            return json.loads(body)
        except ValueError:
            kind = response.headers.get("Content-Type", "no content type")
            raise _Failure("invalid", f"the Cloud API answered non-JSON ({kind})") from None

    # -- failures ------------------------------------------------------------------------

    def _record_failure(self, exc: _Failure, *, log_failure: bool = True) -> float:
        """Count and log (once per change of kind) a failed pass; returns the retry delay."""
        self.refresh_results[exc.kind] += 1
        self.consecutive_failures += 1
        self.last_error = str(exc)
        ceiling = self._cfg.max_backoff if self._cfg.max_backoff is not None else self._cfg.interval
        delay = backoff_delay(self.consecutive_failures, self._cfg.interval, ceiling, self._rng)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        kept = len(self.replicas) if self.replicas is not None else 0
        if exc.kind != self._state and log_failure:
            log.log(
                logging.ERROR if exc.kind == "auth" else logging.WARNING,
                "Cloud API refresh failed (%s): %s; keeping the last good set of %d "
                "replica(s); retrying with backoff (next in %.1fs)",
                exc.kind,
                exc,
                kept,
                delay,
            )
        else:
            log.debug("Cloud API refresh still failing (%s): %s", exc.kind, exc)
        self._state = exc.kind
        return delay

    def _log_problems(self, result: ParseResult) -> None:
        if result.problems == self._problems:
            return
        for problem in result.problems:
            if problem not in self._problems:
                log.warning("Cloud API record skipped: %s", problem)
        self._problems = result.problems

    async def _sleep(self, delay: float) -> None:
        self._wake.clear()
        if delay <= 0:
            return
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass


def _detail(response: httpx.Response) -> str:
    """The error message of a Cloud API answer (`detail` or `message`), kept short."""
    try:
        data = response.json()
    except ValueError:
        data = None
    text = ""
    if isinstance(data, dict):
        value = data.get("detail") or data.get("message") or data.get("error")
        text = value if isinstance(value, str) else ""
    if not text:
        text = response.reason_phrase or "no detail"
    return text[:200]


def _describe(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_local(url: str) -> bool:
    host = httpx.URL(url).host
    return host in {"localhost", "127.0.0.1", "::1"}
