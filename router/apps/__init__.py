"""Several apps behind one router: each app's settings, and the host table that finds a
request's app (docs/architecture.md, "The app boundary")."""
