"""router.simulator."""
