"""The pool of idle keep-alive connections to replicas, per replica host, and dialling.

The pool hands out the most recently used idle connection (warm, least likely to have been
closed by the peer), keeps at most `max_idle` per host and closes those idle longer than
`idle_timeout`. A connection comes back only reusable: exactly one complete response read
for the request written (`UpstreamConnection` decides, the pool checks).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from router.failures import CONNECT, CONNECT_TIMEOUT, TLS
from router.models import Replica
from router.proxy.fast.outbox import Outbox
from router.proxy.fast.upstream import PoolKey, UpstreamConnection
from router.reach import AttestedReach, ConnectTo, PeerCheck, PeerRefused, peer_leaf

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Target:
    """How to reach one replica, computed once per replica URL."""

    key: PoolKey
    dial_host: str
    dial_port: int
    tls: ssl.SSLContext | None
    server_hostname: str | None
    prefix: bytes  # the replica's path prefix
    host_line: bytes  # b"Host: authority\r\n"
    # Checks a new connection before a byte is sent (RA-TLS); None: no check.
    peer_check: PeerCheck | None


class Pool:
    """Idle keep-alive connections per (scheme, host, port), and dialling new ones."""

    def __init__(
        self,
        connect_to: ConnectTo,
        tls: ssl.SSLContext,
        *,
        connect_timeout: float,
        response_timeout: float,
        idle_timeout: float,
        max_idle: int = 128,
        peer_check: PeerCheck | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.outbox = Outbox(self.loop)
        self._connect_to = connect_to
        self._tls = tls
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._peer_check = peer_check
        self._idle: dict[PoolKey, list[UpstreamConnection]] = {}
        self._targets: dict[str, Target] = {}
        self._attested_targets: dict[tuple[str, AttestedReach], Target] = {}
        self._dials: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def target(self, replica: Replica, attested: AttestedReach | None = None) -> Target:
        """How to reach `replica`; with `attested` (an app's RA-TLS), on that app's own
        connections, dialled with its context and checked by its gate."""
        if attested is not None:
            return self._attested_target(replica, attested)
        target = self._targets.get(replica.url)
        if target is None:
            target = self._new_target(replica, self._tls, self._peer_check, None)
            if len(self._targets) > 65536:
                self._targets.clear()  # replicas churned: rebuild lazily
            self._targets[replica.url] = target
        return target

    def _attested_target(self, replica: Replica, attested: AttestedReach) -> Target:
        target = self._attested_targets.get((replica.url, attested))
        if target is None:
            target = self._new_target(replica, attested.tls, attested.check, attested)
            if len(self._attested_targets) > 65536:
                self._attested_targets.clear()
            self._attested_targets[(replica.url, attested)] = target
        return target

    def _new_target(
        self,
        replica: Replica,
        tls: ssl.SSLContext,
        check: PeerCheck | None,
        attested: AttestedReach | None,
    ) -> Target:
        dial = self._connect_to.lookup(replica.host) or (replica.host, replica.port)
        https = replica.scheme == "https"
        return Target(
            key=(replica.scheme, replica.host.lower(), replica.port, attested),
            dial_host=dial[0],
            dial_port=dial[1],
            tls=tls if https else None,
            server_hostname=replica.host if https else None,
            prefix=replica.path_prefix.encode("latin-1"),
            host_line=f"Host: {replica.authority}\r\n".encode("latin-1"),
            peer_check=check,
        )

    def acquire(self, target: Target) -> UpstreamConnection | None:
        idle = self._idle.get(target.key)
        while idle:
            conn = idle.pop()
            if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        conn.detach()
        if not conn.reusable or self._closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_timeout / 2, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - self.idle_timeout
        for key, idle in list(self._idle.items()):
            stale = [c for c in idle if c.idle_since <= cutoff]
            for conn in stale:
                idle.remove(conn)
                conn.close()
            if not idle:
                del self._idle[key]
        if self._idle:
            self._sweeper = self.loop.call_later(self.idle_timeout / 2, self._sweep)

    def connect(
        self,
        target: Target,
        done: Callable[[UpstreamConnection | None, BaseException | None], None],
    ) -> None:
        """Dial a new connection; `done(conn, None)` or `done(None, error)` is called later."""
        task = self.loop.create_task(self._dial(target, done))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)

    async def _dial(
        self,
        target: Target,
        done: Callable[[UpstreamConnection | None, BaseException | None], None],
    ) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self, target.key),
                    target.dial_host,
                    target.dial_port,
                    ssl=target.tls,
                    server_hostname=target.server_hostname,
                )
        except (OSError, TimeoutError) as exc:
            done(None, exc)
            return
        except Exception as exc:  # e.g. an unencodable host name: still a failed dial
            log.warning("dialling %s failed: %r", target.key, exc)
            done(None, exc)
            return
        check = target.peer_check
        if check is not None:
            # RA-TLS: the session must end in the attested replica before a byte is sent.
            _, host, port, _ = target.key
            try:
                reason = await check(host, port, peer_leaf(conn.transport))
            except BaseException:  # cancelled (pool closing): do not leak the connection
                conn.close()
                raise
            if reason is not None:
                conn.close()
                done(None, PeerRefused(reason))
                return
        done(conn, None)

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for task in self._dials:
            task.cancel()


def classify_dial_error(exc: BaseException) -> str:
    """connect, tls or connect_timeout (`router.failures.PRE_SEND`)."""
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return TLS
    if isinstance(exc, TimeoutError):
        return CONNECT_TIMEOUT
    return CONNECT
