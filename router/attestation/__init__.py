"""router.attestation: attestation-gated admission of replicas.

- `verify.verify_evidence` (pure): one quote + event log against an `Expectation`
  (`claims.py`: the OS, binding, key-provider and nonce checks; `measurements.py`: known-good
  MRTD/RTMR0-2 entries; `binding.py`: static replicas must name their app and instance).
- `manager.Attestor`: fetches (`fetch.py`), verifies and reports verdicts on a schedule.
- `collateral.CollateralStore`: Intel collateral from a PCCS, a disk cache or a file.
- `drift.group_by_compose` (pure): replicas grouped by compose hash.
- `report`: a verdict as JSON or one line of text, its checks, `attest --measurements`.

Submodules are imported directly: `verify` stays free of network libraries.
"""
