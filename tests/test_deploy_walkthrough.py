"""The README's "From zero" walkthrough, run in a scratch root as far as this machine allows.

Lines that need root, the network or a real system (git clone, pip, useradd, systemctl,
certbot, curl, `replicas`) are skipped; every line that writes or checks the config runs
as written, with /etc, /var and /opt moved under a temporary directory and the
`phala-router` group replaced by the current user's. certbot is played by writing a
certificate where certbot would and running the shipped deploy hook as certbot does.
"""

from __future__ import annotations

import configparser
import grp
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SKIPPED = (
    *("git clone", "python3 -m venv", "useradd", "$EDITOR", "cp deploy/systemd", "certbot "),
    *("curl ", "systemctl ", "/opt/phala-router/bin/phala-router replicas"),
)


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### From zero", 1)[1].split("\n### ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the walkthrough's shell block"
    return match.group(1)


def scratch_script(script: str, root: Path) -> str:
    kept = [line for line in script.splitlines() if not line.lstrip().startswith(SKIPPED)]
    text = "\n".join(kept)
    group = grp.getgrgid(os.getgid()).gr_name
    for system_dir in ("/etc/phala-router", "/var/lib/phala-router"):
        text = text.replace(system_dir, f"{root}{system_dir}")
    text = text.replace("/opt/phala-router/bin/phala-router", str(BIN / "phala-router"))
    return text.replace("-g phala-router", f"-g {group}")


def fake_certbot(root: Path) -> None:
    """What `certbot certonly ... --deploy-hook H` leaves behind: a lineage, then H run."""
    lineage = root / "etc/letsencrypt/live/api.example.com"
    lineage.mkdir(parents=True)
    cert = trustme.CA().issue_cert("api.example.com")
    cert.private_key_pem.write_to_path(str(lineage / "privkey.pem"))
    (lineage / "fullchain.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    env = {
        **os.environ,
        "RENEWED_LINEAGE": str(lineage),
        "PHALA_ROUTER_TLS_DIR": str(root / "etc/phala-router/tls"),
        "PHALA_ROUTER_GROUP": grp.getgrgid(os.getgid()).gr_name,
    }
    subprocess.run([str(root / "etc/phala-router/deploy-hook.sh")], env=env, check=True)


def test_walkthrough_config_steps_run_as_written(tmp_path: Path) -> None:
    script = walkthrough()
    step4 = script.index("# 4.")
    env = {**os.environ, "PHALA_CLOUD_API_KEY": "phak_test"}
    # Steps 1-3 (config dir, plain HTTP + ACME webroot, deploy hook), then certbot, then 4.
    for part in (script[:step4], None, script[step4:]):
        if part is None:
            fake_certbot(tmp_path)
            continue
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", scratch_script(part, tmp_path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    config = tmp_path / "etc/phala-router/router.yaml"
    text = config.read_text()
    assert text.count("\nlisten:") + text.startswith("listen:") <= 1  # no duplicate key
    assert 'listen: "0.0.0.0:80"' in text
    assert stat.S_IMODE((tmp_path / "etc/phala-router/env").stat().st_mode) == 0o600
    key = tmp_path / "etc/phala-router/tls/privkey.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o640  # readable by the service's group only
    from router.config import load_config

    loaded = load_config(config, {})
    assert loaded.listen_tls is not None
    assert loaded.listen_tls.cert_file is not None
    assert loaded.listen_tls.cert_file.is_file()
    assert str(loaded.acme_webroot).endswith("/var/lib/phala-router/acme")


def test_systemd_unit_gives_the_service_what_the_walkthrough_uses() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "deploy/systemd/phala-router.service")
    service = unit["Service"]
    assert service["User"] == "phala-router"
    assert service["CacheDirectory"] == "phala-router"  # /var/cache/phala-router, writable
    assert service["StateDirectory"] == "phala-router"  # holds the ACME webroot
    assert service["EnvironmentFile"].endswith("/etc/phala-router/env")
    script = walkthrough()
    assert "useradd --system" in script
    assert script.index("install -d -m 0750 -g phala-router /etc/phala-router") < script.index(
        "/etc/phala-router/router.yaml"
    )
    assert "cd phala-router" in script.splitlines()[2]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Every directive is known to this systemd; the binary path points at this venv."""
    unit = (ROOT / "deploy/systemd/phala-router.service").read_text()
    local = tmp_path / "phala-router.service"
    local.write_text(unit.replace("/opt/phala-router/bin/phala-router", str(BIN / "phala-router")))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [line for line in result.stderr.splitlines() if "phala-router.service" in line]
    assert problems == [], result.stderr
