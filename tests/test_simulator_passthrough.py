"""The simulated gateway passthrough reads the SNI of a real ClientHello and drops a
connection without one, as dstack's gateway does."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from router.simulator.passthrough import Passthrough, client_hello_sni


def client_hello(server_hostname: str | None) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_the_sni_of_a_real_client_hello_is_read() -> None:
    assert client_hello_sni(client_hello("ABC-8443s.dstack.test")) == "abc-8443s.dstack.test"
    assert client_hello_sni(client_hello(None)) is None
    with pytest.raises(ValueError, match="ClientHello"):
        client_hello_sni(b"GET / HTTP/1.1\r\n\r\n")


async def test_a_connection_without_a_known_sni_is_dropped() -> None:
    gateway = Passthrough({})
    await gateway.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(client_hello(None))
        assert await reader.read() == b""  # closed without an answer
        writer.close()
        assert gateway.dropped == 1
    finally:
        await gateway.stop()
