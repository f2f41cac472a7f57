"""Benchmarks: the trainer side by side with Keras model.fit, written to BENCHMARKS.md.

    python3 bench/run_all.py            # every table (about 40 minutes on 2 CPU cores)
    python3 bench/run_all.py --quick    # every table at a small scale (a few minutes)
    python3 bench/run_all.py --only=vs_fit,segments --out=/tmp/b.md

Each comparison alternates its candidates within every repetition, in one process, and
reports medians with min and max of the timed repetitions after a warm-up, plus paired
ratios (see bench/common.py). Start-up time and peak memory are measured on child processes
(bench/child.py), also alternating. These are measurements, not tests: nothing here fails
when a goal is missed; the tables say so.
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import trainer  # noqa: E402,F401  (runtime defaults before TensorFlow creates devices)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

# Two logical CPU devices, for the replicas benchmark; before TensorFlow initializes.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

from bench import common, suites  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Small models and fewer steps: every table in minutes.")
flags.DEFINE_list(
    "only", [], f"Run only these benchmarks (default: all): {', '.join(suites.NAMES)}."
)
flags.DEFINE_string("out", os.path.join(ROOT, "BENCHMARKS.md"), "Markdown file to write.")
flags.DEFINE_integer("reps", 5, "Timed repetitions per comparison (after warm-up).", lower_bound=1)
flags.DEFINE_integer("warmup", 1, "Untimed warm-up repetitions.", lower_bound=0)
flags.register_validator(
    "only",
    lambda names: all(n in suites.NAMES for n in names),
    f"--only takes names from: {', '.join(suites.NAMES)}",
)


def _log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def render(sections, scale, seconds, argv) -> str:
    info = common.machine()
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python3 bench/run_all.py{' ' + ' '.join(argv) if argv else ''}` "
        f"({scale.name} scale) in {seconds / 60:.0f} minutes. Every comparison ran in one "
        f"process, alternating its candidates within each repetition; values are medians of "
        f"{scale.reps} timed repetitions after {scale.warmup} warm-up, with (min-max). Ratios "
        "are paired: each repetition's value over the baseline's in the same repetition.",
        "",
        "| machine | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines.append("")
    for section in sections:
        lines.append(section.markdown())
    return "\n".join(lines)


def main(argv):
    extra = [a for a in sys.argv[1:]]
    scale = suites.Scale.quick() if FLAGS.quick else suites.Scale.full()
    scale.reps, scale.warmup = FLAGS.reps, FLAGS.warmup
    names = FLAGS.only or list(suites.NAMES)
    started = time.time()
    sections = []
    for name in names:
        _log(f"== {name}")
        t0 = time.time()
        sections.append(suites.RUNNERS[name](scale, _log))
        _log(f"   {name}: {time.time() - t0:.0f} s")
    text = render(sections, scale, time.time() - started, extra)
    with open(FLAGS.out, "w") as f:
        f.write(text)
    _log(f"wrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
