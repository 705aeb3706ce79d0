"""router.balancing."""
