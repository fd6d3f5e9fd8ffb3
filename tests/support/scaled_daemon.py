"""``sentinel-keeper`` with the daemon's own clock sped up, for runs against the Ollama
double at accelerated time (benchmarks/residency.py):

    python -m tests.support.scaled_daemon SCALE --policy P run

The daemon gets ``Timings().scaled(SCALE)`` through the CLI's own entry point: its probes
while Ollama does not answer, its watch between passes, the jitter of its passes and the
back-off after a failed load run SCALE times faster, as they would in simulated time. The
policy's interval is scaled by the benchmark, in the policy it writes.
"""

from __future__ import annotations

import sys

from sentinel_keeper.cli.main import main
from sentinel_keeper.values.timings import Timings

if __name__ == "__main__":
    sys.exit(main(sys.argv[2:], timings=Timings().scaled(float(sys.argv[1]))))
