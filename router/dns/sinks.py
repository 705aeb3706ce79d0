"""Sinks that follow the live records: a file (atomic) and RFC 2136 dynamic updates.

`DnsPublisher` runs one task per sink. A sink writes only when the record set differs from
what it last wrote, and never twice within `min_interval`, so a flapping replica cannot
storm a DNS server: changes during the wait coalesce into one write of the latest set. A
failed write is retried after `retry_interval`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from router.dns.feed import RecordFeed, cancel_and_wait
from router.dns.formats import render
from router.dns.records import RecordSet, managed_names, select
from router.dns.settings import DnsConfig, FileSinkConfig, Rfc2136SinkConfig
from router.errors import ConfigError, DnsSinkError
from router.settings_types import split_host_port

log = logging.getLogger(__name__)


class Sink(Protocol):
    name: str

    async def write(self, records: RecordSet) -> None: ...


class FileSink:
    def __init__(self, cfg: FileSinkConfig) -> None:
        self._cfg = cfg
        self.name = f"file:{cfg.path}"

    async def write(self, records: RecordSet) -> None:
        text = render(records, self._cfg.format)
        try:
            await asyncio.to_thread(atomic_write, self._cfg.path, text)
        except OSError as exc:
            raise DnsSinkError(f"cannot write {self._cfg.path}: {exc.strerror or exc}") from exc
        if self._cfg.post_write_command:
            await run_command(self._cfg.post_write_command, self._cfg.post_write_timeout)


def atomic_write(path: Path, text: str) -> None:
    """Write a temp file next to `path`, fsync, rename over it: readers see old or new."""
    fd, temp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


async def run_command(argv: Sequence[str], timeout: float) -> None:
    """Run without a shell; a non-zero exit or a timeout is a DnsSinkError."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise DnsSinkError(f"post_write_command {argv[0]!r} cannot start: {exc}") from exc
    try:
        async with asyncio.timeout(timeout):
            _, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise DnsSinkError(f"post_write_command {argv[0]!r} timed out after {timeout}s") from None
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-300:]
        raise DnsSinkError(f"post_write_command {argv[0]!r} exited {process.returncode}: {tail}")


class Rfc2136Sink:
    """Replaces the router's RRsets on a primary by dynamic update (TSIG-signed when a key
    is configured), then queries the primary to check it now serves them."""

    def __init__(
        self, cfg: Rfc2136SinkConfig, dns_cfg: DnsConfig, environ: Mapping[str, str] | None = None
    ) -> None:
        self._cfg = cfg
        self._owned = managed_names(dns_cfg)
        self._host, self._port = split_host_port(cfg.server)
        self.name = f"rfc2136:{cfg.server}/{cfg.zone}"
        self._keyring: dict[dns.name.Name, dns.tsig.Key] | None = None
        self._keyname: dns.name.Name | None = None
        if cfg.tsig_key_name is not None and cfg.tsig_secret_env is not None:
            env = os.environ if environ is None else environ
            secret = env.get(cfg.tsig_secret_env)
            if not secret:
                raise ConfigError(
                    f"dns.sinks rfc2136 {cfg.server}: environment variable "
                    f"{cfg.tsig_secret_env} (tsig_secret_env) is not set"
                )
            try:
                base64.b64decode(secret, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(
                    f"environment variable {cfg.tsig_secret_env} does not hold a base64 TSIG "
                    "secret (tsig-keygen prints one)"
                ) from None
            self._keyname = dns.name.from_text(cfg.tsig_key_name)
            key = dns.tsig.Key(self._keyname, secret, cfg.tsig_algorithm)
            self._keyring = {self._keyname: key}

    def _wanted(self, records: RecordSet) -> dict[tuple[str, str], dns.rdataset.Rdataset]:
        wanted: dict[tuple[str, str], dns.rdataset.Rdataset] = {}
        for (name, rdtype), group in records.rrsets().items():
            if (name, rdtype) not in self._owned:
                continue  # SOA and NS belong to the primary
            rdataset = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))
            for record in group:
                rdataset.add(
                    dns.rdata.from_text(dns.rdataclass.IN, rdataset.rdtype, record.value),
                    record.ttl,
                )
            wanted[(name, rdtype)] = rdataset
        return wanted

    async def write(self, records: RecordSet) -> None:
        zone = dns.name.from_text(self._cfg.zone)
        update = dns.update.UpdateMessage(
            zone,
            keyring=self._keyring,
            keyname=self._keyname,
            keyalgorithm=self._cfg.tsig_algorithm,
        )
        wanted = self._wanted(records)
        for name, rdtype in self._owned:
            rdataset = wanted.get((name, rdtype))
            if rdataset is None:
                update.delete(dns.name.from_text(name), rdtype)
            else:
                update.replace(dns.name.from_text(name), rdataset)
        response = await self._send(update)
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            raise DnsSinkError(f"{self.name}: the update was refused: {dns.rcode.to_text(rcode)}")
        if self._cfg.verify:
            await self._verify(wanted)

    async def _verify(self, wanted: dict[tuple[str, str], dns.rdataset.Rdataset]) -> None:
        for name, rdtype in self._owned:
            query = dns.message.make_query(name, rdtype)
            query.flags &= ~dns.flags.RD  # no recursion: ask the primary what it serves itself
            answer = await self._send(query)
            served = {
                rd
                for rrset in answer.answer
                for rd in rrset
                if rrset.rdtype == query.question[0].rdtype
            }
            expected = set(wanted[(name, rdtype)]) if (name, rdtype) in wanted else set()
            if served != expected:
                raise DnsSinkError(
                    f"{self.name}: after the update {name} {rdtype} serves "
                    f"{sorted(r.to_text() for r in served)}, expected "
                    f"{sorted(r.to_text() for r in expected)}"
                )

    async def _send(self, message: dns.message.Message) -> dns.message.Message:
        try:
            return await dns.asyncquery.tcp(
                message, self._host, port=self._port, timeout=self._cfg.timeout
            )
        except dns.tsig.PeerError as exc:
            raise DnsSinkError(
                f"{self.name}: the server rejected TSIG key {self._cfg.tsig_key_name} "
                f"({type(exc).__name__}): check tsig_key_name, tsig_algorithm and the secret "
                f"in ${self._cfg.tsig_secret_env}"
            ) from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsSinkError(f"{self.name}: {type(exc).__name__}: {exc}") from exc


def make_sinks(cfg: DnsConfig, environ: Mapping[str, str] | None = None) -> list[Sink]:
    """Build the configured sinks; a missing TSIG secret is a ConfigError."""
    sinks: list[Sink] = []
    for sink_cfg in cfg.sinks:
        if isinstance(sink_cfg, FileSinkConfig):
            sinks.append(FileSink(sink_cfg))
        else:
            sinks.append(Rfc2136Sink(sink_cfg, cfg, environ))
    return sinks


class DnsPublisher:
    def __init__(
        self,
        cfg: DnsConfig,
        feed: RecordFeed,
        sinks: Sequence[Sink],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        self._feed = feed
        self._sinks = list(sinks)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._wakes = [asyncio.Event() for _ in self._sinks]
        self._tasks: list[asyncio.Task[None]] = []
        self.writes: dict[str, int] = {s.name: 0 for s in self._sinks}
        self.failures: dict[str, int] = {s.name: 0 for s in self._sinks}
        self.written: dict[str, RecordSet | None] = {s.name: None for s in self._sinks}

    async def start(self) -> None:
        self._feed.subscribe(self._on_records)
        for sink, wake in zip(self._sinks, self._wakes, strict=True):
            wake.set()  # publish the current set once at start
            self._tasks.append(asyncio.create_task(self._follow(sink, wake), name=sink.name))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()

    def _on_records(self, records: RecordSet) -> None:
        for wake in self._wakes:
            wake.set()

    async def _follow(self, sink: Sink, wake: asyncio.Event) -> None:
        last_attempt: float | None = None
        while True:
            await wake.wait()
            if last_attempt is not None:
                wait = last_attempt + self._cfg.min_interval - self._clock()
                if wait > 0:
                    await self._sleep(wait)  # changes meanwhile coalesce into one write
            wake.clear()
            target = self._feed.current
            if target == self.written[sink.name]:
                continue
            last_attempt = self._clock()
            try:
                await sink.write(select(target, self._cfg.max_records, self._rng))
            except DnsSinkError as exc:
                self.failures[sink.name] += 1
                log.warning(
                    "DNS sink %s failed: %s; retrying in %ss",
                    sink.name,
                    exc,
                    self._cfg.retry_interval,
                )
                asyncio.get_running_loop().call_later(self._cfg.retry_interval, wake.set)
                continue
            self.written[sink.name] = target
            self.writes[sink.name] += 1
            log.info(
                "DNS sink %s: wrote %d records (serial %d)",
                sink.name,
                len(target.records),
                target.serial,
            )
