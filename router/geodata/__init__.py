"""Data tables shipped with the router (see README.md here for sources and licences)."""
