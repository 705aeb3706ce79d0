"""router.dns."""
