"""One benchmark training run in a fresh process: start-up time and peak memory.

    python3 bench/child.py trainer|fit MODEL BATCH STEPS LAUNCHED_AT [DATASET CACHE SIZE]

DATASET, CACHE and SIZE (optional, e.g. folder:/tmp/f none 32) train on that dataset with
that --cache and --image_size and --augment, instead of the synthetic set.

Prints one JSON line: `first_step_sec` (from LAUNCHED_AT, the parent's time.time() just
before it started this process, to the end of the first training step: interpreter start,
imports, data, model build, tracing, one step), `train_sec` (the remaining STEPS - 1
steps) and `peak_rss_mib` (this process's peak resident memory, VmHWM).
"""

from __future__ import annotations

import json
import os
import sys
import time


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Unlike the rusage the parent gets from
    wait4, it does not include the parent's memory at fork/exec time."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv) -> int:
    side, model, batch, steps, launched_at = argv[1:6]
    batch, steps, launched_at = int(batch), int(steps), float(launched_at)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    # Both sides get the project's TensorFlow runtime defaults, before TensorFlow loads.
    from trainer import runtime

    runtime.configure(quiet=True)
    from bench import workloads

    overrides = {}
    if len(argv) > 6:
        dataset, cache, size = argv[6:9]
        overrides = dict(dataset=dataset, cache=cache, image_size=int(size), augment=True)
    config = workloads.make_config(model, batch, examples=steps * batch, **overrides)
    if side == "trainer":
        runner = workloads.Trainer(config)
    elif side == "fit":
        runner = workloads.Fit(config)
    else:
        raise SystemExit(f"child.py: unknown side {side!r}")
    runner.run_steps(1)
    first = time.time() - launched_at
    t0 = time.perf_counter()
    runner.run_steps(steps - 1)
    train = time.perf_counter() - t0
    runner.close()
    result = {"first_step_sec": first, "train_sec": train, "peak_rss_mib": _peak_rss_mib()}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
