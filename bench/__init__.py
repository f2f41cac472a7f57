"""Benchmarks of the trainer against Keras model.fit; see bench/run_all.py and BUILD.md."""

# The benchmarks of bench/suites.py, in BENCHMARKS.md order (names for run_all.py --only).
NAMES = (
    "vs_fit",
    "segments",
    "layer_decay",
    "adaptive",
    "input",
    "memory_startup",
    "growth",
    "replicas",
    "checkpoint",
    "runtime",
    "data",
    "stream",
    "size224",
    "fused_bn",
)
