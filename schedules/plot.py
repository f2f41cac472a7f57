"""Plot an SGDR learning-rate schedule per step, with its restarts marked.

    python -m schedules.plot --max_lr=0.01 --first_cycle_steps=100 --cycle_mult=2 \\
        --total_steps=1500 --out=sgdr.png

The article's three figures:

    # (1) plain cosine annealing over the whole run: one cycle of total_steps
    python -m schedules.plot --first_cycle_steps=1500 --total_steps=1500 --out=cosine.png
    # (2) restarts every 100 steps
    python -m schedules.plot --first_cycle_steps=100 --cycle_mult=1 --total_steps=1500
    # (3) cycles doubling in length
    python -m schedules.plot --first_cycle_steps=100 --cycle_mult=2 --total_steps=1500

`--lr_mults=0.00001,0.01,1` draws one curve per layer segment (lr = mult * schedule) on a
log-scale y axis. Library users call `plot_schedule(schedule, total_steps, out)`.
Needs matplotlib: pip install -e ".[plots]"
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys

from absl import app, flags

INSTALL_HINT = (
    'matplotlib is needed for plotting: pip install -e ".[plots]" (or pip install matplotlib)'
)


class MissingMatplotlib(ImportError):
    """matplotlib is not installed."""


def plot_schedule(schedule, total_steps, out, lr_mults=None, title=None):
    """Writes a PNG of `schedule`'s learning rate at steps 0 .. total_steps - 1.

    Restarts (from `schedule.restart_steps`, when the schedule has it) are drawn as vertical
    dashed lines. With `lr_mults`, one curve per segment shows `mult * schedule(step)` on a
    log-scale y axis.

    Args:
        schedule: A Keras `LearningRateSchedule` (or any callable taking a 1-D step tensor).
        total_steps: Number of steps to draw (integer >= 1).
        out: Path of the PNG to write; its directory must exist.
        lr_mults: Optional sequence of positive per-segment learning-rate multipliers.
        title: Optional figure title.

    Returns:
        `out`.

    Raises:
        ValueError: `total_steps` or `lr_mults` is invalid.
        MissingMatplotlib: matplotlib is not installed.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(
            f"Argument `total_steps` must be an integer >= 1. Received: total_steps={total_steps!r}"
        )
    if lr_mults is not None:
        lr_mults = [float(x) for x in lr_mults]
        if not lr_mults or any(not (math.isfinite(x) and x > 0) for x in lr_mults):
            raise ValueError(
                f"Argument `lr_mults` must be positive numbers. Received: lr_mults={lr_mults}"
            )
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingMatplotlib(INSTALL_HINT) from e
    import numpy as np
    import tensorflow as tf

    steps = np.arange(total_steps)
    lr = np.asarray(schedule(tf.constant(steps, tf.int64)), dtype=np.float64)  # one call
    restarts = schedule.restart_steps(total_steps) if hasattr(schedule, "restart_steps") else []

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    if lr_mults is None:
        ax.plot(steps, lr, label="learning rate", color="C0")
    else:
        for i, mult in enumerate(lr_mults):
            ax.plot(steps, mult * lr, label=f"segment {i} (x {mult:g})", color=f"C{i % 10}")
        ax.set_yscale("log")
        if lr.max() > 0:
            # min_lr = 0 sends each cycle's last steps towards 0; three decades below the
            # smallest peak keep the segments readable instead of chasing 1e-12.
            ax.set_ylim(bottom=min(lr_mults) * lr.max() * 1e-3, top=max(lr_mults) * lr.max() * 2)
    for j, s in enumerate(r for r in restarts if r > 0):
        ax.axvline(
            s, color="0.4", linestyle="--", linewidth=0.8, label="restart" if j == 0 else None
        )
    ax.set_xlabel("step (optimizer updates)")
    ax.set_ylabel("learning rate")
    ax.set_xlim(0, max(total_steps - 1, 1))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


# ---- Command line ---------------------------------------------------------------------


def _positive(x):
    return x is not None and x > 0


def define_flags(fv=flags.FLAGS):
    """Defines this tool's flags on `fv` (only when run as a script: the trainer has its own)."""
    flags.DEFINE_float(
        "max_lr", 0.01, "Peak learning rate of the first cycle (> 0).", flag_values=fv
    )
    flags.DEFINE_float(
        "min_lr", 0.0, "Floor learning rate, absolute (0 <= min_lr <= max_lr).", flag_values=fv
    )
    flags.DEFINE_float(
        "first_cycle_steps", 100, "Length of the first cycle, in steps (>= 1).", flag_values=fv
    )
    flags.DEFINE_float(
        "cycle_mult", 2.0, "Cycle length multiplier per restart, unitless (>= 1).", flag_values=fv
    )
    flags.DEFINE_float(
        "max_lr_decay", 1.0, "Peak multiplier per restart, unitless, in (0, 1].", flag_values=fv
    )
    flags.DEFINE_integer(
        "warmup_steps", 0, "Linear warmup length, in steps (>= 0).", flag_values=fv
    )
    flags.DEFINE_integer(
        "total_steps", 1500, "Length of the plotted run, in steps (>= 1).", flag_values=fv
    )
    flags.DEFINE_list(
        "lr_mults",
        None,
        "Optional comma-separated per-segment learning-rate "
        "multipliers, unitless (> 0), e.g. 0.00001,0.01,1: one curve each.",
        flag_values=fv,
    )
    flags.DEFINE_string("out", "sgdr.png", "Path of the PNG to write.", flag_values=fv)
    flags.DEFINE_string("title", None, "Optional figure title.", flag_values=fv)

    checks = {
        "max_lr": (_positive, "must be a finite number > 0"),
        "min_lr": (lambda x: x is not None and x >= 0, "must be a finite number >= 0"),
        "first_cycle_steps": (
            lambda x: x is not None and x >= 1,
            "must be a finite number >= 1 (steps)",
        ),
        "cycle_mult": (lambda x: x is not None and x >= 1, "must be a finite number >= 1"),
        "max_lr_decay": (
            lambda x: x is not None and 0 < x <= 1,
            "must be a finite number in (0, 1]",
        ),
        "warmup_steps": (lambda x: x is not None and x >= 0, "must be >= 0 (steps)"),
        "total_steps": (lambda x: x is not None and x >= 1, "must be >= 1 (steps)"),
        "lr_mults": (_valid_mults, "must be comma-separated numbers > 0"),
        "out": (lambda x: bool(x) and x.lower().endswith(".png"), "must be a path ending in .png"),
    }
    for name, (check, message) in checks.items():
        flags.register_validator(name, _finite_and(check), message=message, flag_values=fv)
    flags.register_multi_flags_validator(
        ["min_lr", "max_lr"],
        lambda d: d["min_lr"] is None or d["max_lr"] is None or d["min_lr"] <= d["max_lr"],
        message="--min_lr must be <= --max_lr",
        flag_values=fv,
    )


def _finite_and(check):
    def validate(x):
        if isinstance(x, float) and not math.isfinite(x):
            return False
        return check(x)

    return validate


def _valid_mults(values):
    if values is None:
        return True
    try:
        mults = [float(v) for v in values]
    except ValueError:
        return False
    return bool(mults) and all(math.isfinite(m) and m > 0 for m in mults)


def _fail(message):
    """The one-line user error: message on stderr, exit code 2, no traceback."""
    sys.stderr.write(f"schedules.plot: error: {message}\n")
    sys.exit(2)


def _parse(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(" ".join(str(e).split()))


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if importlib.util.find_spec("matplotlib") is None:
        _fail(INSTALL_HINT)  # before loading TensorFlow, which takes seconds
    fv = flags.FLAGS
    out_dir = os.path.dirname(os.path.abspath(fv.out))
    if not os.path.isdir(out_dir):
        _fail(f"flag --out={fv.out}: directory {out_dir} does not exist")
    # TensorFlow's C++ start-up log lines, as the trainer's commands hide them (unless the
    # user set the level); the command, not the library, decides this.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from schedules.sgdr import SGDR  # imported late: TensorFlow loads only for valid flags

    try:
        schedule = SGDR(
            max_lr=fv.max_lr,
            first_cycle_steps=fv.first_cycle_steps,
            min_lr=fv.min_lr,
            cycle_mult=fv.cycle_mult,
            max_lr_decay=fv.max_lr_decay,
            warmup_steps=fv.warmup_steps,
        )
        mults = None if fv.lr_mults is None else [float(x) for x in fv.lr_mults]
        plot_schedule(schedule, fv.total_steps, fv.out, lr_mults=mults, title=fv.title)
    except MissingMatplotlib as e:
        _fail(str(e))
    except ValueError as e:
        _fail(str(e))
    print(f"wrote {fv.out}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=_parse)
