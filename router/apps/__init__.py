"""Several apps behind one router: each app's settings, and the host table that finds a
request's app (docs/architecture.md, "The app boundary")."""

# The name of the one app of a config without `apps:` (status, metrics label).
IMPLICIT_APP = "default"
