"""Health checking: active probes, passive outlier detection, feeding the reconciler.

- `state`: the pure state machines (rise/fall, expected status/body, scheduling delays,
  outlier ejection with backoff, cap and decay) and the `HealthView` they produce.
- `probe`: one HTTP check sent exactly like traffic.
- `active`: `HealthChecker`, the scheduler with bounded concurrency.
- `passive`: `PassiveDetector`, fed by the data plane on every upstream attempt.

Submodules are imported directly, so `state` stays free of network libraries.
Panic mode and slow start are applied by `router.snapshot.build_snapshot` from the views.
"""
