"""DNS records that follow the healthy set: render formats, sinks and an authoritative server.

Submodules are imported directly, so `records` and `formats` stay free of network
libraries. Entry points for the CLI and `serve` (in `service.py`):
- `DnsService(cfg.dns, reconciler, app_id=..., pinned=connect_to.lookup)`: start()/stop()
- `render_snapshot(cfg.dns, snapshot, fmt, app_id=..., pinned=...)` -> (text, notes)
- `render_from_admin(cfg.dns, url, fmt, token=..., pinned=...)` -> (text, notes)
"""
