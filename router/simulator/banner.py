"""The banner `phala-router simulate` and the demo print: where each simulated part listens,
the router settings that trust it, its replicas and curl lines to try."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from router.simulator.quotes import simulated_os_measurement

if TYPE_CHECKING:
    from router.simulator.core import Simulator


def simulator_banner(sim: Simulator) -> str:
    gateway_host, gateway_port = sim.gateway_address.rsplit(":", 1)
    default_port = 443 if sim.config.tls else 80
    lines = [
        f"Phala Cloud simulator for app {', app '.join(sim.app_ids)}",
        f"  Cloud API   {sim.api_url}   (X-API-Key: {sim.config.api_key})",
        f"  gateway     {sim.gateway_address}   ({sim.scheme}, *.{sim.config.base_domain})",
        f"  control     {sim.control_url}/replicas",
    ]
    if sim.ca_file is not None:
        lines.append(f"  gateway CA  {sim.ca_file}")
    if sim.attestation:
        lines += [
            "attestation: simulated TDX quotes, signed by the simulator's own key (INSECURE)",
            f"  public key  {sim.quote_public_key.hex()}",
            "  router config:  attestation: {verifier: insecure-simulator, "
            "simulator_public_keys: [<public key>]}",
            "  simulated OS:  os_measurements: ["
            + json.dumps(simulated_os_measurement(), separators=(", ", ": "))
            + "]",
        ]
    lines.append("replicas:")
    for r in sim.replicas:
        state = r.status + (" (in progress)" if r.in_progress else "")
        app = f" (app {sim.ctx.apps[r.app_id]})" if len(sim.ctx.apps) > 1 else ""
        lines.append(
            f"  {r.instance_id}  {r.region:<14} {state:<10} {sim.url_of(r.instance_id)}{app}"
        )
    if sim.replicas:
        host = sim.host_of(sim.replicas[0].instance_id)
        cacert = f"--cacert {sim.ca_file} " if sim.ca_file else ""
        lines += [
            "try:",
            f"  curl {cacert}--connect-to {host}:{default_port}:{gateway_host}:{gateway_port} "
            f"{sim.scheme}://{host}/",
            f"  curl -H 'X-API-Key: {sim.config.api_key}' "
            f"{sim.api_url}/apps/{sim.config.app_id}/cvms",
            f'  curl -X PUT -d \'{{"mode": "500"}}\' {sim.control_url}/api-mode',
        ]
    return "\n".join(lines)
