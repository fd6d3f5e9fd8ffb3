"""``sentinel-keeper`` with the daemon's own clock constants divided by a time scale, for runs
against the Ollama double at accelerated time (benchmarks/residency.py).

The policy's interval is scaled by the benchmark. What the daemon does on its own clock is
scaled here, so that in simulated time it behaves as it does in real time: its probes while
Ollama does not answer, its look at /api/ps between passes, the jitter of its passes, and the
back-off after a failed load. The main loop's tick (sd_notify, the watchdog) is left alone.

    SENTINEL_BENCH_TIME_SCALE=120 python benchmarks/_scaled_daemon.py --policy P run

A constant that no longer exists stops the run: the benchmark would otherwise measure
something else than it says.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

import _harness  # noqa: F401 (puts the checkout on sys.path)

from sentinel_keeper import daemon, reconcile
from sentinel_keeper.cli import main

SCALED: dict[ModuleType, tuple[str, ...]] = {
    daemon: ("PROBE_FIRST_SECONDS", "PROBE_MAX_SECONDS", "JITTER_MAX_SECONDS", "WATCH_SECONDS"),
    reconcile: ("BACKOFF_BASE_SECONDS", "BACKOFF_MAX_SECONDS"),
}


def scale_constants(scale: float) -> list[str]:
    """Divide each constant by ``scale``; returns "module.NAME old -> new" lines."""
    changed = []
    for module, names in SCALED.items():
        for name in names:
            value = getattr(module, name, None)
            if not isinstance(value, int | float):
                raise SystemExit(
                    f"{module.__name__}.{name} is gone: update benchmarks/_scaled_daemon.py"
                )
            setattr(module, name, value / scale)
            changed.append(f"{module.__name__}.{name} {value:g} -> {value / scale:.4g}")
    return changed


if __name__ == "__main__":
    scale_constants(float(os.environ["SENTINEL_BENCH_TIME_SCALE"]))
    sys.exit(main())
