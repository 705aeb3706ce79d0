"""router.discovery."""
