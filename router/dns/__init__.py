"""DNS records that follow the healthy set: render formats, sinks and an authoritative server.

Entry points for the CLI and `serve`:
- `DnsService(cfg.dns, reconciler, app_id=..., pinned=connect_to.lookup)`: start()/stop()
- `render_snapshot(cfg.dns, snapshot, fmt, app_id=..., pinned=...)` -> (text, notes)
- `render_from_admin(cfg.dns, url, fmt, token=..., pinned=...)` -> (text, notes)
"""

from router.dns.formats import FORMATS, render
from router.dns.records import RecordSet, build_records, records_from_admin_status, select
from router.dns.service import (
    DnsRenderError,
    DnsService,
    render_admin_status,
    render_from_admin,
    render_snapshot,
)

__all__ = [
    "FORMATS",
    "DnsRenderError",
    "DnsService",
    "RecordSet",
    "build_records",
    "records_from_admin_status",
    "render",
    "render_admin_status",
    "render_from_admin",
    "render_snapshot",
    "select",
]
