"""router.proxy."""
