from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

ENGINES = ["aiohttp", "fast"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Every data-plane conformance test runs once per engine."""
    name: str = request.param
    return name


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def pytest_report_header(config: pytest.Config) -> str:
    """Say which hot path these tests exercise (`make test` runs both)."""
    from router.native import build_description

    return f"phala-router hot path: {build_description()}"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail loudly if anything imported gevent's monkey-patching into the test process
    (e.g. importing locust): asyncio's sockets and TLS would then break at random."""
    import socket

    assert socket.socket.__module__ == "socket", (
        "gevent has patched socket; do not import locust in tests"
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--deep",
        action="store_true",
        default=False,
        help="property tests run many more examples (and shrink failures): for long runs",
    )


@pytest.fixture(scope="session")
def deep(request: pytest.FixtureRequest) -> bool:
    """Whether `--deep` was given: property tests scale their example counts by it."""
    return bool(request.config.getoption("--deep"))
