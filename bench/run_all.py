"""Benchmarks: the trainer side by side with Keras model.fit, written to BENCHMARKS.md.

    python3 bench/run_all.py            # every table (about 1 hour on 2 CPU cores)
    python3 bench/run_all.py --quick    # every table at a small scale (a few minutes)
    python3 bench/run_all.py --only=vs_fit,segments --out=/tmp/b.md
    nice -n 10 python3 bench/run_all.py --only=size224,fused_bn --out=/tmp/b.md  # 224 px

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

from trainer import runtime  # noqa: E402

# The project's TensorFlow runtime defaults, before TensorFlow is imported.
runtime.configure(quiet=True)

from absl import app, flags  # noqa: E402

from bench import NAMES  # noqa: E402

# TensorFlow is imported in main(), after the flags are checked: a bad flag is one line.

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Small models and fewer steps: every table in minutes.")
flags.DEFINE_list("only", [], f"Run only these benchmarks (default: all): {', '.join(NAMES)}.")
flags.DEFINE_string("out", os.path.join(ROOT, "BENCHMARKS.md"), "Markdown file to write.")
flags.DEFINE_integer("reps", 5, "Timed repetitions per comparison (after warm-up).", lower_bound=1)
flags.DEFINE_integer("warmup", 1, "Untimed warm-up repetitions.", lower_bound=0)
flags.register_validator(
    "only",
    lambda names: all(n in NAMES for n in names),
    f"--only takes names from: {', '.join(NAMES)}",
)


def parse_flags(argv):
    """absl parsing; a bad flag is one line on stderr and exit code 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        msg = str(e).replace("\n", " ")
        sys.stderr.write(f"run_all.py: error: {msg}\n")
        sys.exit(2)


def _log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def render(sections, scale, seconds, argv) -> str:
    from bench import common

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
    if len(argv) > 1:
        sys.stderr.write(f"run_all.py: error: unexpected arguments: {' '.join(argv[1:])}\n")
        return 2
    extra = sys.argv[1:]
    tf = runtime.import_tensorflow()

    # Two logical CPU devices for the replicas benchmark, before TensorFlow initializes.
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
    from bench import suites

    scale = suites.Scale.quick() if FLAGS.quick else suites.Scale.full()
    scale.reps, scale.warmup = FLAGS.reps, FLAGS.warmup
    scale.reps_given = FLAGS["reps"].present
    names = FLAGS.only or list(NAMES)
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
    app.run(main, flags_parser=parse_flags)
