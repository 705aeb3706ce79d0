"""The fast data plane: asyncio protocols, httptools (llhttp) and uvloop (`proxy.engine: fast`)."""

from router.proxy.fast.engine import FastEngine

__all__ = ["FastEngine"]
