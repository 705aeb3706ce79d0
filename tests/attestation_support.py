"""Helpers for the attestation tests: where the real-quote fixtures are, and reading them.

The fixtures are shared test data, never copied into the project: `ROUTER_FIXTURES_DIR`,
else `<repo>/../shared/fixtures/attestation`, else `/work/shared/fixtures/attestation`.
Tests that need them skip, saying why, when none exists.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dcap_qvl
import pytest
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent


def fixtures_dir() -> Path | None:
    candidates = []
    if env := os.environ.get("ROUTER_FIXTURES_DIR"):
        candidates.append(Path(env))
    candidates += [
        REPO.parent / "shared/fixtures/attestation",
        Path("/work/shared/fixtures/attestation"),
    ]
    return next((c for c in candidates if (c / "qvl-tdx_quote").is_file()), None)


def fixture_path(name: str) -> Path:
    base = fixtures_dir()
    if base is None:
        pytest.skip(
            "real attestation fixtures not found: set ROUTER_FIXTURES_DIR or provide "
            "../shared/fixtures/attestation next to the repository"
        )
    return base / name


def fixture_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fixture_path(name).read_text())
    return data


def fixture_bytes(name: str) -> bytes:
    return fixture_path(name).read_bytes()


def collateral_text(name: str) -> str:
    return fixture_path(name).read_text()


def collateral(name: str) -> dcap_qvl.QuoteCollateralV3:
    return dcap_qvl.QuoteCollateralV3.from_json(collateral_text(name))


def pinned_now(collateral_name: str) -> int:
    """issueDate of the collateral's TCB info + 1 h: inside its validity window."""
    tcb_info = json.loads(json.loads(collateral_text(collateral_name))["tcb_info"])
    issued = dt.datetime.fromisoformat(tcb_info["issueDate"].replace("Z", "+00:00"))
    return int(issued.timestamp()) + 3600


# The dstack GetQuote fixture and the collateral it verifies with (README).
DSTACK = "dstack-quote-report.json"
DSTACK_COLLATERAL = "qvl-tdx_quote_outdated_collateral.json"
DSTACK_APP_ID = "3763bc34552cf3a27ff71ad5f7a90471562a1a2d"
DSTACK_INSTANCE_ID = "c3714eb66990eace777b4e664c16e09375dec4c9"
DSTACK_COMPOSE_HASH = "3763bc34552cf3a27ff71ad5f7a90471562a1a2df552dfc1998cba2d60da27e7"


def pccs_app(collateral_name: str) -> tuple[web.Application, list[str]]:
    """A local PCCS serving one fixture collateral the way dcap-qvl's client asks for it
    (PCCS v4 API: issuer chains in URL-encoded headers, TCB info and QE identity as
    `{"tcbInfo": ..., "signature": hex}`, the root CA CRL as hex). Returns the app and the
    list of paths it was asked for."""
    data = json.loads(collateral_text(collateral_name))
    asked: list[str] = []

    def signed(field: str, body: str, signature: str) -> str:
        # The signed JSON is embedded byte for byte: re-serialising it would break it.
        return f'{{"{field}":{body},"signature":"{signature}"}}'

    async def pckcrl(request: web.Request) -> web.Response:
        asked.append(request.path)
        chain = quote(data["pck_crl_issuer_chain"])
        return web.Response(
            body=bytes.fromhex(data["pck_crl"]), headers={"SGX-PCK-CRL-Issuer-Chain": chain}
        )

    async def rootcacrl(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(text=data["root_ca_crl"])

    async def tcb(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(
            text=signed("tcbInfo", data["tcb_info"], data["tcb_info_signature"]),
            headers={"TCB-Info-Issuer-Chain": quote(data["tcb_info_issuer_chain"])},
        )

    async def qe_identity(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(
            text=signed("enclaveIdentity", data["qe_identity"], data["qe_identity_signature"]),
            headers={"SGX-Enclave-Identity-Issuer-Chain": quote(data["qe_identity_issuer_chain"])},
        )

    app = web.Application()
    app.router.add_get("/sgx/certification/v4/pckcrl", pckcrl)
    app.router.add_get("/sgx/certification/v4/rootcacrl", rootcacrl)
    app.router.add_get("/tdx/certification/v4/tcb", tcb)
    app.router.add_get("/tdx/certification/v4/qe/identity", qe_identity)
    return app, asked


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run `app` on 127.0.0.1 on an ephemeral port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
