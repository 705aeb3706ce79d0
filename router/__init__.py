"""phala-router."""
