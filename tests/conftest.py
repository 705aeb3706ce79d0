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
