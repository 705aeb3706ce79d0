"""Several apps on `listen_tls` under Envoy: the SNI rule and certificates by host name.

The Python engines refuse (421) a request whose Host names an app the connection's SNI
cannot reach (router/proxy/apps.py, `HostTable.reachable`), and pick the certificate by SNI
(exact name, then the longest wildcard, else `listen_tls.cert_file`). Envoy routes by Host
alone, but it picks a listener filter chain by SNI with the same precedence (`server_names`:
exact, then each shorter `*.suffix`, then the chain without names). So every SNI name the
config knows (app hosts and certificate hosts) gets a chain of its own: its certificate, and
a route configuration in which the apps that name cannot reach answer 421. Names that
reach every app share the listener's ordinary route configuration. A name the config does
not list has a chain of its own too (`ANY_OTHER_NAME`), apart from connections without SNI:
the router lets it reach only the default app. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.apps.certificates import ServedCertificate
from router.apps.hosts import HostRoute, HostTable
from router.proxy.envoy.vhosts import EnvoyApp

# The chain of an SNI that names no app or certificate host (chain_matcher.py: any name).
ANY_OTHER_NAME = "*"


@dataclass(frozen=True)
class SniChain:
    """One SNI name's filter chain on the TLS listener."""

    # exact, `*.suffix` (any depth below suffix, as the router), or ANY_OTHER_NAME
    server_name: str
    # The apps a connection with this SNI may reach; None: every app (no restriction).
    reachable: frozenset[str] | None
    # The certificate for this name; None: listen_tls.cert_file.
    certificate: ServedCertificate | None


def sni_chains(
    apps: Sequence[EnvoyApp] | None, certificates: Sequence[ServedCertificate]
) -> list[SniChain]:
    """The SNI filter chains of the TLS listener, sorted by name; [] when one app and one
    certificate serve every name (then the listener needs no chain per name)."""
    routes = [(route, app.name) for app in apps or () for route in app.routes]
    default = next((app.name for app in apps or () if app.default), None)
    names = frozenset(app.name for app in apps or ())
    return plan_sni_chains(routes, default, names, certificates)


def plan_sni_chains(
    routes: Sequence[tuple[HostRoute, str]],
    default: str | None,
    apps: frozenset[str],
    certificates: Sequence[ServedCertificate] = (),
) -> list[SniChain]:
    """`sni_chains` from the apps' host routes (route -> app name) and `default` app."""
    several = len(apps) > 1
    # One app that is the default serves every name (the router's single-app case).
    only = not several and default is not None
    if only and not certificates:
        return []
    hosts = HostTable(routes, default)
    by_name = HostTable(
        (HostRoute(host), certificate) for certificate in certificates for host in certificate.hosts
    )
    names = {route.host for route, _ in routes} | {h for c in certificates for h in c.hosts}
    chains = []
    for name in sorted(names):
        # `*.suffix` is never an exact route or certificate, so for a wildcard both lookups
        # start at the wildcard levels: what every name only that wildcard covers gets.
        reachable = apps if only else hosts.reachable(name)
        restricted = None if reachable == apps else reachable
        chains.append(SniChain(name, restricted, by_name.lookup(name)))
    # No route covers an unlisted name: it reaches the default app alone, if there is one.
    unknown = apps if only else frozenset(() if default is None else (default,))
    restricted = None if unknown == apps else unknown
    chains.append(SniChain(ANY_OTHER_NAME, restricted, None))
    return chains


def restrictions(chains: Sequence[SniChain]) -> list[frozenset[str]]:
    """The distinct app sets the chains restrict to (one route configuration each)."""
    found = {chain.reachable for chain in chains if chain.reachable is not None}
    return sorted(found, key=lambda apps: sorted(apps))


def restricted_suffix(reachable: frozenset[str]) -> str:
    """The route configuration name's tail for a restriction to `reachable`."""
    return "+".join(sorted(reachable)) if reachable else "none"
