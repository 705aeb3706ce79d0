"""Turn a failed bind into one line an operator can act on: the address, the config key
that set it, and why (in use, not permitted, no such address), instead of a traceback."""

from __future__ import annotations

import errno
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from router.errors import StartupError

if TYPE_CHECKING:
    from router.config import RouterConfig

_WHY = {
    errno.EADDRINUSE: "address already in use (another process listens there)",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "no such address on this machine",
}


def _port_in(message: str) -> int | None:
    """The port asyncio/aiohttp name in a bind error: "... address ('127.0.0.1', 8080): ..."."""
    match = re.search(r"\(\s*'[^']*'\s*,\s*(\d+)\s*\)", message) or re.search(r":(\d+)\b", message)
    return int(match.group(1)) if match else None


def listen_error(exc: OSError, candidates: Sequence[tuple[str, str]]) -> StartupError:
    """`candidates` are (config key, HOST:PORT) that the failed start was binding."""
    key, address = candidates[0]
    port = _port_in(str(exc))
    for cand_key, cand_address in candidates:
        if port is not None and cand_address.rsplit(":", 1)[-1] == str(port):
            key, address = cand_key, cand_address
            break
    why = _WHY.get(exc.errno or 0) or (exc.strerror or str(exc))
    return StartupError(f"cannot listen on {address} ({key}): {why}")


def proxy_listeners(config: RouterConfig) -> list[tuple[str, str]]:
    """(config key, HOST:PORT) of the traffic listeners, for a bind error message."""
    listeners = [("listen", config.listen)] if config.listen else []
    if config.listen_tls is not None:
        listeners.append(("listen_tls.listen", config.listen_tls.listen))
    return listeners
