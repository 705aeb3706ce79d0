"""One active health check: an HTTP GET sent exactly like traffic, judged into a CheckResult.

The session comes from `router.reach.make_connector`, so the check uses the replica's
host name for Host and TLS SNI, the same TLS verification and the same `connect_to`
dial address as proxied requests: a check tests what traffic will see.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping

import aiohttp
from yarl import URL

from router.health.settings import HealthConfig
from router.health.state import Expectation, judge
from router.models import CheckResult, Replica
from router.reach import make_connector

# Enough for any health body; a bigger one is cut (and the connection not reused).
MAX_BODY = 64 * 1024


def health_url(replica: Replica, path: str) -> URL:
    """The replica's origin, its path prefix, then `health.path`."""
    prefix = replica.path_prefix.rstrip("/")
    return URL.build(
        scheme=replica.scheme, host=replica.host, port=replica.port, path=prefix + path
    )


def make_health_session(
    connect_to: Mapping[str, str], tls: ssl.SSLContext, cfg: HealthConfig
) -> aiohttp.ClientSession:
    """A session of its own for checks (so probes never queue behind traffic), with the
    traffic's connect_to and TLS context. At most `max_concurrency` checks are on the wire
    at once; connections are kept between checks (like Envoy) so a check every 5 s costs no
    new TCP/TLS handshake; aiohttp retries a GET once when a kept connection turns out stale.
    """
    keepalive = 2 * cfg.interval * (1 + cfg.interval_jitter_percent / 100) + cfg.timeout
    connector = make_connector(
        connect_to, tls, limit=cfg.max_concurrency, keepalive_timeout=keepalive
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        # The check's own timeout is per request; cookies would make checks stateful.
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": "phala-router-health/1"},
    )


async def probe(
    session: aiohttp.ClientSession,
    replica: Replica,
    path: str,
    expect: Expectation,
    timeout: float,
    clock: Callable[[], float],
) -> CheckResult:
    """GET the health path; never raises for anything the replica does."""
    start = clock()
    status: int | None = None
    try:
        async with asyncio.timeout(timeout):
            async with session.get(
                health_url(replica, path),
                headers={"Host": replica.authority},
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.content.read(MAX_BODY)
        body = raw.decode("utf-8", "replace") if expect.body is not None else None
        failure = judge(status, body, expect)
    except TimeoutError:
        failure = f"timeout: no complete answer within {timeout:g}s"
    except aiohttp.ClientError as exc:
        failure = describe(exc)
    except (OSError, ssl.SSLError) as exc:
        failure = f"connect: {exc}"
    end = clock()
    return CheckResult(
        at=end, ok=failure is None, status=status, error=failure, latency=end - start
    )


def describe(exc: aiohttp.ClientError) -> str:
    """A short, stable description of a failed check for logs and the status page."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"tls: certificate rejected: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"tls: handshake failed: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
        return f"connect: {reason}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "reset: the replica closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "reset: the answer was cut short"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"reset: {exc.strerror or exc}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad response: {exc.message}"
    return f"error: {type(exc).__name__}: {exc}"
