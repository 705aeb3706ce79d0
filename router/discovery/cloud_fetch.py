"""One Cloud API request for an app's replica list (`GET /apps/{app_id}/cvms`) and what its
failures mean: auth (the key), rate limited (with Retry-After), timeout, anything else.

The request is what several apps of one router may share (`CvmsRequest`): the same API,
app, API version and key. What each app makes of the answer (port, scheme, passthrough)
is its own (`phala.py`)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from router.discovery.settings import PhalaDiscoveryConfig
from router.errors import DiscoveryAuthError, DiscoveryError

MAX_RETRY_AFTER = 3600.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds (a number or an HTTP date), capped at an hour."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


@dataclass(frozen=True, slots=True)
class CvmsRequest:
    """Everything that makes two discovery requests the same request (the key by its
    variable's name: the secret itself is never compared or kept)."""

    api_url: str
    app_id: str
    api_version: str
    api_key_env: str

    @classmethod
    def of(cls, cfg: PhalaDiscoveryConfig) -> CvmsRequest:
        return cls(cfg.api_url, cfg.app_id, cfg.api_version, cfg.api_key_env)

    @property
    def url(self) -> str:
        return f"{self.api_url}/apps/{self.app_id}/cvms"


class CvmsFetcher:
    """Sends one `CvmsRequest` on demand; raises DiscoveryError (DiscoveryAuthError for the
    key) with the failure's kind."""

    def __init__(
        self,
        request: CvmsRequest,
        *,
        environ: Mapping[str, str],
        wall_clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.request = request
        self._environ = environ
        self._wall_clock = wall_clock
        self._client = httpx.AsyncClient(
            transport=transport,
            headers={
                "X-Phala-Version": request.api_version,
                "Accept": "application/json",
                "User-Agent": "phala-router",
            },
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, timeout: float) -> Any:
        """The decoded JSON answer, or a DiscoveryError that says what went wrong."""
        env = self.request.api_key_env
        key = self._environ.get(env, "").strip()
        if not key:
            raise DiscoveryAuthError(
                f"environment variable {env} is not set: put the Phala Cloud API key in it"
            )
        try:
            async with asyncio.timeout(timeout):
                response = await self._client.get(
                    self.request.url, headers={"X-API-Key": key}, timeout=timeout
                )
                body = await response.aread()
        except (TimeoutError, httpx.TimeoutException):
            raise DiscoveryError(f"no answer within {timeout:g}s", kind="timeout") from None
        except httpx.HTTPError as exc:
            reason = f"cannot reach {self.request.api_url}: {_describe(exc)}"
            raise DiscoveryError(reason) from None
        return self._decode(response, body)

    def _decode(self, response: httpx.Response, body: bytes) -> Any:
        status, env, app = response.status_code, self.request.api_key_env, self.request.app_id
        if status in (401, 403):
            raise DiscoveryAuthError(
                f"the Cloud API refused the API key in ${env} (HTTP {status}: "
                f"{_detail(response)}); check the key and that it can read app {app}",
            )
        if status == 429:
            retry = parse_retry_after(response.headers.get("Retry-After"), self._wall_clock())
            raise DiscoveryError("rate limited (HTTP 429)", kind="rate_limited", retry_after=retry)
        if status == 404:
            raise DiscoveryError(f"app {app} not found (HTTP 404: {_detail(response)})")
        if status != 200:
            raise DiscoveryError(f"HTTP {status}: {_detail(response)}")
        try:
            return json.loads(body)
        except ValueError:
            content = response.headers.get("Content-Type", "no content type")
            reason = f"the Cloud API answered non-JSON ({content})"
            raise DiscoveryError(reason, kind="invalid") from None


def _detail(response: httpx.Response) -> str:
    """The error message of a Cloud API answer (`detail` or `message`), kept short."""
    try:
        data = response.json()
    except ValueError:
        data = None
    text = ""
    if isinstance(data, dict):
        value = data.get("detail") or data.get("message") or data.get("error")
        text = value if isinstance(value, str) else ""
    if not text:
        text = response.reason_phrase or "no detail"
    return text[:200]


def _describe(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def is_local(url: str) -> bool:
    host = httpx.URL(url).host
    return host in {"localhost", "127.0.0.1", "::1"}
