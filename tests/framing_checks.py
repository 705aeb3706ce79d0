"""Runs one differential framing scenario against a live router and states every violation
of the three properties (each check returns sentences, empty when all holds):

(a) what each replica connection received parses under h11 into exactly the requests the
    router accepted, in the order each client sent them, each with the body the router
    parsed from the client, and no bytes that are not part of such a request;
(b) every client receives exactly one response per request it sent, and only responses
    produced for its own requests (the replica echoes each request's tag);
(c) no pooled replica connection is reused after an answer that left unread or ambiguous
    bytes on it (checked live by `RecordingUpstream`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import count

from tests.framing_support import ClientRequest, ResponseReader, render
from tests.hostile_replica import TAG_PATTERN, RecordingUpstream, UpstreamRequest

CLIENT_TIMEOUT = 3.0  # a client waiting this long for an answer or a close is a violation
_TAGS = count(1)

# Every connection ends with this request, so a client reads until the router closes and
# sees any response that arrives after the ones it expected.
CLOSING_PROBE = ClientRequest("GET", "1.1", "none", b"", connection=("close",))


@dataclass
class ClientRun:
    index: int
    requests: list[ClientRequest]
    tags: list[bytes]
    pipelined: bool
    reader: ResponseReader
    timed_out: bool = False
    ping: bytes = b""

    @property
    def label(self) -> str:
        return f"client {self.index}"


@dataclass
class Scenario:
    clients: list[tuple[list[ClientRequest], bool]]  # (requests, pipelined)
    runs: list[ClientRun] = field(default_factory=list)


def with_probe(requests: list[ClientRequest]) -> list[ClientRequest]:
    if requests and requests[-1].must_be_last:
        return requests
    return [*requests, CLOSING_PROBE]


async def run_scenario(
    host: str, port: int, upstream: RecordingUpstream, scenario: Scenario
) -> list[str]:
    first_request = len(upstream.requests)
    first_violation = len(upstream.violations)
    prefix = f"tag-{next(_TAGS):x}"
    runs = []
    for index, (requests, pipelined) in enumerate(scenario.clients):
        requests = with_probe(requests)
        tags = [f"{prefix}-{index * 100 + i}".encode() for i in range(len(requests))]
        runs.append(ClientRun(index, requests, tags, pipelined, ResponseReader(requests)))
    scenario.runs = runs
    await asyncio.gather(*(_run_client(host, port, run) for run in runs))
    await _settle(upstream, runs, first_request)
    problems = [p for run in runs for p in check_client(run)]
    problems += check_upstream(runs, upstream.requests[first_request:])
    problems += [
        f"replica connection {c.index} holds bytes that are no request: {c.unframed_bytes()!r}"
        for c in upstream.connections
        if c.unframed_bytes()
    ]
    problems += upstream.violations[first_violation:]
    return problems


async def _run_client(host: str, port: int, run: ClientRun) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    responses = run.reader

    async def read_until(answers: int = 0) -> None:
        """Until `answers` responses arrived (or a 101), or else until the router closes."""
        while not responses.eof and responses.error is None:
            if answers and (len(responses.responses) >= answers or responses.switched):
                return
            responses.feed(await reader.read(65536))

    try:
        async with asyncio.timeout(CLIENT_TIMEOUT):
            if run.pipelined:
                writer.write(
                    b"".join(render(r, t) for r, t in zip(run.requests, run.tags, strict=True))
                )
            else:
                for i, (request, tag) in enumerate(zip(run.requests, run.tags, strict=True)):
                    writer.write(render(request, tag))
                    await read_until(answers=i + 1)
                    if responses.eof or responses.error or responses.switched:
                        break
            await read_until(answers=len(run.requests))
            last = run.requests[-1]
            if responses.switched:
                await _ping_through_tunnel(run, reader, writer)
            elif not (last.asks_upgrade and not last.closes):
                # The last request closes: read to the end. (An upgrade refused with a
                # normal answer leaves the connection open, as HTTP/1.1 says.)
                await read_until()
    except TimeoutError:
        run.timed_out = True
    except ConnectionError:
        responses.feed(b"")
    finally:
        writer.close()


async def _ping_through_tunnel(
    run: ClientRun, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    run.ping = b"ping-" + run.tags[len(run.reader.responses) - 1]
    writer.write(run.ping)
    while len(run.reader.tunnel) < len(run.ping):
        data = await reader.read(65536)
        if not data:
            return
        run.reader.tunnel += data


async def _settle(
    upstream: RecordingUpstream, runs: list[ClientRun], first: int, timeout: float = 2.0
) -> None:
    """Wait (with a deadline) until every answered request has fully reached the replica or
    its replica connection closed: an early answer can overtake the request body."""
    answered = {
        run.tags[i]
        for run in runs
        for i, r in enumerate(run.reader.responses)
        if r.tag == run.tags[i]
    }
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = [
            r
            for r in upstream.requests[first:]
            if r.tag in answered
            and not r.complete
            and not upstream.connections[r.connection].closed
        ]
        if not pending:
            return
        await asyncio.sleep(0.01)  # polling the recorder, bounded by the deadline


def check_client(run: ClientRun) -> list[str]:
    """Property (b) for one client connection."""
    reader, problems = run.reader, []
    if reader.error is not None:
        problems.append(f"{run.label}: {reader.error}")
    responses = reader.responses
    for i, response in enumerate(responses):
        own = run.tags[i]
        seen = response.tags_seen()
        if response.tag == own:
            if seen - {own}:
                problems.append(
                    f"{run.label}: the response to {own!r} carries {sorted(seen - {own})}"
                )
        elif response.tag is None and not seen and response.status >= 400:
            continue  # the router's own error answer
        else:
            problems.append(
                f"{run.label}: request {i} ({own!r}) got status {response.status} "
                f"tagged {response.tag!r} (tags inside: {sorted(seen)})"
            )
    if len(responses) < len(run.requests) and not _ended_early_rightly(run):
        missing = run.tags[len(responses)]
        how = "the client gave up waiting" if run.timed_out else "the router closed"
        problems.append(
            f"{run.label}: {len(responses)} responses for {len(run.requests)} requests "
            f"(none for {missing!r}; {how})"
        )
    elif run.timed_out and not reader.switched:
        problems.append(f"{run.label}: the router kept the connection open after the last answer")
    if reader.switched and run.ping and reader.tunnel != run.ping:
        problems.append(f"{run.label}: the tunnel echoed {reader.tunnel!r} for {run.ping!r}")
    return problems


def _ended_early_rightly(run: ClientRun) -> bool:
    """A connection may end before every request was answered only after an answer that
    says so: the router's own error, a close-delimited body, `Connection: close`, a 101."""
    if not run.reader.responses or not run.reader.eof:
        return False
    last = run.reader.responses[-1]
    router_error = last.tag is None and last.status >= 400
    return router_error or last.close_delimited or last.says_close or last.status == 101


def check_upstream(runs: list[ClientRun], received: list[UpstreamRequest]) -> list[str]:
    """Property (a): what the replica parsed is exactly what the router accepted."""
    sent = {tag: (run, i) for run in runs for i, tag in enumerate(run.tags)}
    problems = []
    for request in received:
        origin = sent.get(request.tag)
        if origin is None:
            problems.append(
                f"replica connection {request.connection} received a request no client sent: "
                f"{request.method!r} {request.target!r} tag {request.tag!r}"
            )
            continue
        problems += _compare(request, origin[0].requests[origin[1]])
    counts = Counter(r.tag for r in received)
    problems += [f"replica received {tag!r} {n} times" for tag, n in counts.items() if n > 1]
    for run in runs:
        order = [run.tags.index(r.tag) for r in received if r.tag in run.tags]
        if order != sorted(order):
            problems.append(f"{run.label}: requests reached the replica out of order: {order}")
        problems += _accepted_vs_received(run, counts)
    return problems


def _compare(got: UpstreamRequest, sent: ClientRequest) -> list[str]:
    problems = []
    where = f"replica connection {got.connection}, {got.tag!r}"
    if got.method.decode() != sent.method or got.target != b"/t/" + got.tag:
        problems.append(f"{where}: arrived as {got.method!r} {got.target!r}")
    complete_body = got.body == sent.body
    if not (complete_body if got.complete else sent.body.startswith(got.body)):
        problems.append(f"{where}: body {got.body[:120]!r} for a sent body of {sent.body[:120]!r}")
    foreign = {m for _, v in got.headers for m in _tags_in(v)} - {got.tag}
    if foreign:
        problems.append(f"{where}: carries header values of other requests {sorted(foreign)}")
    return problems


def _tags_in(value: bytes) -> list[bytes]:
    return TAG_PATTERN.findall(value)


def _accepted_vs_received(run: ClientRun, counts: Counter[bytes]) -> list[str]:
    problems = []
    for i, response in enumerate(run.reader.responses):
        tag = run.tags[i]
        if response.tag == tag and counts[tag] == 0:
            problems.append(f"{run.label}: {tag!r} was answered by the replica that never saw it")
        if response.tag is None and 400 <= response.status < 500 and counts[tag]:
            problems.append(
                f"{run.label}: {tag!r} was refused with {response.status} yet forwarded"
            )
    return problems
