"""Where Envoy dials replicas and where it listens: addresses chosen by the router.

Envoy is given IP literals (its EDS takes no host names): `connect_to` first, then the
router's own DNS lookups, cached and refreshed by the engine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from router.models import Replica
from router.reach import ConnectTo
from router.settings_types import split_host_port
from router.snapshot import Snapshot

log = logging.getLogger(__name__)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Dialer:
    """Replica -> the IP and port Envoy dials (`connect_to` first, then DNS, cached)."""

    def __init__(self, connect_to: ConnectTo) -> None:
        self.connect_to = connect_to
        self._resolved: dict[str, str] = {}

    def __call__(self, replica: Replica) -> tuple[str, int] | None:
        pinned = self.connect_to.lookup(replica.host)
        if pinned is not None:
            return pinned
        if _is_ip(replica.host):
            return replica.host, replica.port
        ip = self._resolved.get(replica.host)
        return None if ip is None else (ip, replica.port)

    def unresolved(self, snapshot: Snapshot) -> set[str]:
        return {
            s.replica.host
            for s in snapshot.statuses
            if not self.connect_to.lookup(s.replica.host)
            and not _is_ip(s.replica.host)
            and s.replica.host not in self._resolved
        }

    async def resolve(self, hosts: set[str]) -> bool:
        """Look `hosts` up; True when an address changed. A host that does not resolve
        keeps its last address (or stays out of Envoy until it resolves)."""
        loop = asyncio.get_running_loop()
        changed = False
        for host in sorted(hosts):
            try:
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("cannot resolve replica host %s: %s", host, exc)
                continue
            address = str(infos[0][4][0])
            changed |= self._resolved.get(host) != address
            self._resolved[host] = address
        return changed

    async def refresh(self) -> bool:
        """Re-resolve every host seen so far (addresses behind a gateway name move)."""
        return await self.resolve(set(self._resolved))


def bind_port(address: str) -> tuple[str, int]:
    """A concrete port for `address` (port 0 -> a free one): Envoy keeps listener
    addresses across updates, so the port must be chosen once, before the first start."""
    host, port = split_host_port(address)
    if port != 0:
        return host, port
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return host, int(sock.getsockname()[1])
