"""Certificates chosen by host name on `listen_tls`: `listen_tls.certificates[]` and
`apps[].tls`. Checked to load when the config loads, so a wrong path, a key that does not
match its certificate or a file that is not PEM is a config error naming the field, not a
failed handshake later. (router/tls.py serves them.)"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from router.apps.hosts import parse_route
from router.settings_types import Frozen


class CertificatePair(Frozen):
    """A PEM certificate chain and its private key, checked to load when the config does."""

    cert_file: Path
    key_file: Path

    @field_validator("cert_file", "key_file")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"{str(value)!r} is not a readable file")
        return value

    @model_validator(mode="after")
    def _loads(self) -> CertificatePair:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                str(self.cert_file), str(self.key_file)
            )
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cert_file {str(self.cert_file)!r} and key_file {str(self.key_file)!r} do not "
                f"load as a PEM certificate chain and its private key ({exc})"
            ) from None
        return self


class HostCertificate(CertificatePair):
    """`listen_tls.certificates[]`: the certificate served to clients whose SNI is one of
    `hosts` (exact names or `*.example.com` wildcards, no paths)."""

    hosts: tuple[str, ...] = Field(min_length=1)

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        routes = [parse_route(text) for text in value]
        prefixed = [str(r) for r in routes if r.prefix]
        if prefixed:
            raise ValueError(
                f"{', '.join(prefixed)}: a certificate is chosen by host name (SNI) only; "
                "drop the path"
            )
        return tuple(dict.fromkeys(r.host for r in routes))


@dataclass(frozen=True, slots=True)
class ServedCertificate:
    """One certificate the TLS listener serves by SNI, with where it was configured."""

    label: str  # "listen_tls.certificates[0]" or "apps[1] (ui).tls": for errors and logs
    hosts: tuple[str, ...]
    cert_file: Path
    key_file: Path


def served_certificates(
    listed: Sequence[HostCertificate],
    apps: Sequence[tuple[str, Sequence[str], CertificatePair | None]],
) -> tuple[ServedCertificate, ...]:
    """Every certificate chosen by SNI: the listed ones, then one per app with `tls` (for
    the host names of its routes). ValueError when two claim the same host name."""
    served = [
        ServedCertificate(f"listen_tls.certificates[{i}]", c.hosts, c.cert_file, c.key_file)
        for i, c in enumerate(listed)
    ]
    for index, (name, hosts, tls) in enumerate(apps):
        if tls is not None:
            label = f"apps[{index}] ({name}).tls"
            served.append(
                ServedCertificate(label, tuple(dict.fromkeys(hosts)), tls.cert_file, tls.key_file)
            )
    owner: dict[str, str] = {}
    for certificate in served:
        for host in certificate.hosts:
            other = owner.setdefault(host, certificate.label)
            if other != certificate.label:
                raise ValueError(
                    f"{host} has two certificates, {other} and {certificate.label}; "
                    "a host name may have one certificate only"
                )
    return tuple(served)
