"""`make_picker_factory(cfg)`: everything a routing policy needs, built once from config.

The returned factory is called by `build_snapshot` for every snapshot with the routable
members; the picker it returns serves requests until the next snapshot. Expensive things
(the GeoIP database, the sticky signing key, region tables) are loaded here, once; sticky
hash tables are built here per snapshot, and only for groups whose members changed.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
from collections.abc import Iterator, Mapping, Sequence

from router.balancing.base import InFlight, Member, Picker, PickerFactory, RequestContext
from router.balancing.geo import GeoPicker
from router.balancing.group import FlatPicker, KeyedPicker
from router.balancing.locate import GeoIP, Locator, open_geoip
from router.balancing.settings import RoutingConfig
from router.balancing.sticky import CookieSticky, KeyedSticky
from router.balancing.tables import KeyTables
from router.errors import ConfigError
from router.models import Replica

log = logging.getLogger(__name__)

DEBUG_HEADER = "X-Router-Route"
# Without routing.sticky.key_env, one random key per process: a config reload builds a new
# factory but must not invalidate the cookies already handed out.
_PROCESS_KEY = secrets.token_bytes(32)


class DebugHeaders:
    """Adds the one-line explanation of the choice as a response header."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Picker) -> None:
        self._inner = inner

    def candidates(self, ctx: RequestContext) -> Iterator[Replica]:
        slot: int | None = None
        for replica in self._inner.candidates(ctx):
            # Refreshed per candidate: a failover may change the explanation.
            header = (DEBUG_HEADER, ctx.explanation)
            if slot is None:
                slot = len(ctx.response_headers)
                ctx.response_headers.append(header)
            else:
                ctx.response_headers[slot] = header
            yield replica


def _signing_key(cfg: RoutingConfig, environ: Mapping[str, str]) -> bytes:
    name = cfg.sticky.key_env
    if name is None:
        log.warning(
            "routing.sticky.key_env is not set: sticky cookies are signed with a random "
            "per-process key, so they stop pinning after a restart and differ between routers"
        )
        return _PROCESS_KEY
    value = environ.get(name, "")
    if len(value) < 16:
        raise ConfigError(
            f"routing.sticky.key_env: environment variable {name} must hold the key that "
            "signs sticky cookies (at least 16 characters; e.g. the output of "
            "`openssl rand -hex 32`)"
        )
    return value.encode()


def make_picker_factory(
    cfg: RoutingConfig,
    *,
    environ: Mapping[str, str] = os.environ,
    rng: random.Random | None = None,
    geoip: GeoIP | None = None,
) -> PickerFactory:
    """The picker factory for `cfg.policy` with `cfg.sticky` and `cfg.debug_headers`
    applied. `rng` and `geoip` are for tests; by default a fresh `random.Random` and the
    GeoIP database named by config (or the embedded one) are used. Raises ConfigError
    when the sticky key's variable is missing or the .mmdb file is unreadable."""
    random_source = rng or random.Random()
    sticky = cfg.sticky
    key = _signing_key(cfg, environ) if sticky.mode == "cookie" else b""
    locator: Locator | None = None
    if cfg.policy == "geo":
        if geoip is None and "geoip" in cfg.geo.client_location:
            geoip = open_geoip(cfg.geo.geoip_database)
        locator = Locator(cfg.geo, geoip)

    # Sticky tables live as long as the factory (a config reload makes a new one) and are
    # rebuilt only for groups whose members or weights changed.
    tables = KeyTables(sticky) if sticky.mode in ("header", "ip") else None

    def build(members: Sequence[Member], in_flight: InFlight) -> Picker:
        if tables is not None:
            tables.next_generation()
        inner: KeyedPicker
        if cfg.policy == "geo":
            assert locator is not None
            inner = GeoPicker(
                members, in_flight, cfg.geo, locator, random_source, tables, sticky.hash
            )
        else:
            inner = FlatPicker(members, cfg.policy, in_flight, random_source, tables, sticky.hash)
        picker: Picker
        if sticky.mode == "cookie":
            picker = CookieSticky(inner, members, sticky, key)
        elif sticky.mode in ("header", "ip"):
            picker = KeyedSticky(inner, sticky)
        else:
            picker = inner
        return DebugHeaders(picker) if cfg.debug_headers else picker

    return build
