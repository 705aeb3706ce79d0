"""phala-router."""

from router.native import force_pure_if_requested

# PHALA_ROUTER_PURE=1: the hot path runs from its .py sources even when compiled.
force_pure_if_requested()
