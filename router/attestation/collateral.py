"""Intel collateral for dcap-qvl: fetched from a PCCS, cached per FMSPC, or read from a file.

Collateral (TCB info, QE identity, CRLs and their issuer chains) says which TCB levels of a
platform family (FMSPC) are current; it is valid for about a month. We keep it in memory and
on disk under `<cache_dir>/<FMSPC>.json`, and fetch it again a little before its
`nextUpdate` so verification never stalls on an expired copy. When a refresh fails the old
copy is kept while it is valid (and even after, so the verdict says `collateral_expired`
rather than hiding why). With nothing at all the attempt fails closed: `pccs_unreachable`
when the PCCS could not be reached (a source outage), `no_collateral` when none is
configured. A quote whose FMSPC cannot be read is `malformed_quote`.

Offline sites set `collateral.file`: a collateral JSON or a JSON list of them; nothing is
fetched for an FMSPC it covers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import dcap_qvl

from router.attestation.settings import CollateralConfig
from router.errors import AttestationError

log = logging.getLogger(__name__)

Fetcher = Callable[[str, bytes], Awaitable[dcap_qvl.QuoteCollateralV3]]
REFRESH_BEFORE = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class CachedCollateral:
    fmspc: str
    collateral: dcap_qvl.QuoteCollateralV3
    text: str
    issued: float
    next_update: float


def _instant(value: object, what: str) -> float:
    if not isinstance(value, str):
        raise ValueError(f"{what} is missing")
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def load_collateral(text: str) -> CachedCollateral:
    """Parse one collateral JSON; its window is the TCB info's issueDate to the earliest
    nextUpdate of TCB info and QE identity. Raises ValueError naming the problem."""
    try:
        collateral = dcap_qvl.QuoteCollateralV3.from_json(text)
        tcb_info = json.loads(collateral.tcb_info)
        qe_identity = json.loads(collateral.qe_identity)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a dcap-qvl collateral JSON: {exc}") from None
    fmspc = tcb_info.get("fmspc")
    if not isinstance(fmspc, str):
        raise ValueError("tcb_info has no fmspc")
    next_update = min(
        _instant(tcb_info.get("nextUpdate"), "tcb_info.nextUpdate"),
        _instant(qe_identity.get("nextUpdate"), "qe_identity.nextUpdate"),
    )
    issued = _instant(tcb_info.get("issueDate"), "tcb_info.issueDate")
    return CachedCollateral(fmspc.upper(), collateral, text, issued, next_update)


def _load_file(path: Path) -> dict[str, CachedCollateral]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AttestationError(
            "no_collateral", f"cannot read collateral file {path}: {exc}"
        ) from None
    items = data if isinstance(data, list) else [data]
    found = {}
    for index, item in enumerate(items):
        try:
            entry = load_collateral(json.dumps(item))
        except ValueError as exc:
            raise AttestationError("no_collateral", f"{path} entry {index}: {exc}") from None
        found[entry.fmspc] = entry
    return found


def quote_fmspc(raw: bytes) -> str:
    try:
        return str(dcap_qvl.parse_quote(raw).fmspc()).upper()
    except ValueError as exc:
        raise AttestationError("malformed_quote", f"cannot read the quote's FMSPC: {exc}") from None


class CollateralStore:
    """`await get(raw_quote)` -> collateral for that quote's platform, or AttestationError
    `no_collateral`. `wall_clock` is Unix seconds (collateral windows are calendar dates)."""

    def __init__(
        self,
        cfg: CollateralConfig,
        *,
        wall_clock: Callable[[], float] = time.time,
        fetcher: Fetcher | None = None,
        timeout: float = 10.0,
        refresh_before: float = REFRESH_BEFORE,
    ) -> None:
        self._cfg = cfg
        self._wall_clock = wall_clock
        self._fetcher: Fetcher = fetcher or dcap_qvl.get_collateral
        self._timeout = timeout
        self._refresh_before = refresh_before
        self._offline = _load_file(cfg.file) if cfg.file else {}
        self._cache: dict[str, CachedCollateral] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, raw_quote: bytes) -> dcap_qvl.QuoteCollateralV3:
        fmspc = quote_fmspc(raw_quote)
        if fmspc in self._offline:
            return self._offline[fmspc].collateral
        now = self._wall_clock()
        entry = self._cache.get(fmspc) or self._read_disk(fmspc)
        if entry is not None and now < entry.next_update - self._refresh_before:
            return entry.collateral
        lock = self._locks.setdefault(fmspc, asyncio.Lock())
        async with lock:
            # Another attempt may have refreshed it while we waited.
            entry = self._cache.get(fmspc) or entry
            if entry is not None and now < entry.next_update - self._refresh_before:
                return entry.collateral
            fresh = await self._fetch(fmspc, raw_quote, have_old=entry is not None)
            if fresh is not None:
                return fresh.collateral
        if entry is None and self._cfg.pccs_url:
            raise AttestationError(
                "pccs_unreachable",
                f"no collateral for FMSPC {fmspc}: fetching from {self._cfg.pccs_url} failed",
            )
        if entry is None:
            raise AttestationError(
                "no_collateral",
                f"no collateral for FMSPC {fmspc}: set attestation.collateral.pccs_url or .file",
            )
        if now >= entry.next_update:
            log.warning("collateral for FMSPC %s is past its nextUpdate; still using it", fmspc)
        return entry.collateral

    async def _fetch(self, fmspc: str, raw: bytes, *, have_old: bool) -> CachedCollateral | None:
        url = self._cfg.pccs_url
        if not url:
            return None
        try:
            async with asyncio.timeout(self._timeout):
                collateral = await self._fetcher(url, raw)
            entry = load_collateral(collateral.to_json())
        except (ValueError, RuntimeError, OSError, TimeoutError) as exc:
            log.warning(
                "collateral fetch for FMSPC %s from %s failed%s: %s",
                fmspc,
                url,
                " (keeping the cached copy)" if have_old else "",
                exc or type(exc).__name__,
            )
            return None
        self._cache[fmspc] = entry
        self._write_disk(entry)
        log.info(
            "collateral for FMSPC %s fetched; valid until %s",
            fmspc,
            dt.datetime.fromtimestamp(entry.next_update, dt.UTC).isoformat(),
        )
        return entry

    def _path(self, fmspc: str) -> Path | None:
        return self._cfg.cache_dir / f"{fmspc}.json" if self._cfg.cache_dir else None

    def _read_disk(self, fmspc: str) -> CachedCollateral | None:
        path = self._path(fmspc)
        if path is None or not path.is_file():
            return None
        try:
            entry = load_collateral(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable collateral cache %s: %s", path, exc)
            return None
        if entry.fmspc != fmspc:
            return None
        self._cache[fmspc] = entry
        return entry

    def _write_disk(self, entry: CachedCollateral) -> None:
        path = self._path(entry.fmspc)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(entry.text, encoding="utf-8")
            os.replace(temporary, path)  # readers never see half a file
        except OSError as exc:
            log.warning("cannot write collateral cache %s: %s", path, exc)
