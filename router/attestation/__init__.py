"""router.attestation."""
