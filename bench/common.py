"""Shared benchmark machinery: alternating timed repetitions, statistics, Markdown tables.

Every comparison runs its candidates in one process, alternating within each repetition
(the order rotates so no candidate always goes first), discards warm-up repetitions and
reports the median, min and max of each candidate. Ratios are *paired*: a candidate's value
divided by the baseline's in the same repetition, then the median (min, max) of those, so
slow drifts of a shared machine cancel out.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable


@dataclasses.dataclass
class Stats:
    """Values of one candidate over the timed repetitions (higher is better unless noted)."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)


@dataclasses.dataclass
class Comparison:
    """The result of `alternate`: per-candidate values and paired ratios to a baseline."""

    stats: dict[str, Stats]
    baseline: str

    def ratio(self, name: str) -> Stats:
        """Per-repetition `name / baseline` values."""
        base = self.stats[self.baseline].values
        return Stats([v / b for v, b in zip(self.stats[name].values, base, strict=True)])


def alternate(
    candidates: dict[str, Callable[[], float | tuple[float, float]]],
    *,
    reps: int,
    warmup: int = 1,
    rounds: int = 1,
    baseline: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Comparison:
    """Runs every candidate `rounds` times per repetition, interleaved, and collects values.

    Args:
        candidates: name -> zero-argument callable measuring one run: a value (e.g. MiB), or
            an `(amount, seconds)` pair (see `rate`). Dict order is the first round's order;
            later rounds rotate it so no candidate always goes first.
        reps: Timed repetitions (>= 1) after `warmup` untimed ones.
        warmup: Repetitions whose values are dropped (tracing, caches, allocator pools).
        rounds: Runs of each candidate per repetition, interleaved (A B C, B C A, ...). A
            repetition's value is total amount / total seconds for pairs, else the mean.
            More rounds of shorter runs pair the candidates more tightly in time.
        baseline: The candidate ratios are taken against (default: the first).
        log: Optional callable receiving one progress line per repetition.

    Returns:
        A `Comparison`.
    """
    if reps < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"reps={reps}, rounds={rounds} must be >= 1 and warmup={warmup} >= 0")
    names = list(candidates)
    values: dict[str, list[float]] = {n: [] for n in names}
    turn = 0
    for rep in range(warmup + reps):
        runs: dict[str, list] = {n: [] for n in names}
        for _ in range(rounds):
            shift = turn % len(names)
            turn += 1
            for name in names[shift:] + names[:shift]:
                runs[name].append(candidates[name]())
        line = []
        for name in names:
            value = _combine(runs[name])
            if rep >= warmup:
                values[name].append(value)
            line.append(f"{name}={value:.4g}")
        if log:
            tag = "warm-up" if rep < warmup else f"rep {rep - warmup + 1}/{reps}"
            log(f"  {tag}: " + ", ".join(line))
    return Comparison({n: Stats(v) for n, v in values.items()}, baseline or names[0])


def _combine(runs: list) -> float:
    if isinstance(runs[0], tuple):
        return sum(a for a, _ in runs) / sum(s for _, s in runs)
    return sum(float(v) for v in runs) / len(runs)


def rate(fn: Callable[[], float]) -> Callable[[], tuple[float, float]]:
    """Wraps `fn() -> items processed` into `() -> (items, wall seconds)` for `alternate`."""

    def timed() -> tuple[float, float]:
        start = time.perf_counter()
        items = fn()
        return float(items), time.perf_counter() - start

    return timed


# Formatting ---------------------------------------------------------------------------------


def fmt(x: float, digits: int = 3) -> str:
    """A number with `digits` significant digits, no exponent for ordinary magnitudes."""
    if x == 0:
        return "0"
    if abs(x) >= 10 ** (digits + 2) or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def spread(s: Stats, digits: int = 3) -> str:
    """`median (min-max)`."""
    return f"{fmt(s.median, digits)} ({fmt(s.min, digits)}-{fmt(s.max, digits)})"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_table(
    comparison: Comparison,
    unit: str,
    labels: dict[str, str] | None = None,
    extra: dict[str, dict[str, str]] | None = None,
) -> str:
    """One row per candidate: value median (min-max) and paired ratio to the baseline."""
    labels = labels or {}
    extra = extra or {}
    extra_cols = list(next(iter(extra.values()), {}).keys())
    base = labels.get(comparison.baseline, comparison.baseline)
    header = ["candidate", f"{unit}, median (min-max)", f"ratio to {base}"]
    header += extra_cols
    rows = []
    for name, stats in comparison.stats.items():
        ratio = "1 (baseline)" if name == comparison.baseline else spread(comparison.ratio(name))
        row = [labels.get(name, name), spread(stats), ratio]
        row += [extra.get(name, {}).get(c, "") for c in extra_cols]
        rows.append(row)
    return table(header, rows)


@dataclasses.dataclass
class Section:
    """One benchmark's part of BENCHMARKS.md."""

    title: str
    command: str
    setup: str
    body: str  # tables (Markdown)
    meaning: str  # what the numbers show, one or two sentences
    goals: list[tuple[str, bool]] = dataclasses.field(default_factory=list)  # (goal, met)

    def markdown(self) -> str:
        parts = [f"## {self.title}", "", self.setup, "", self.body, ""]
        if self.goals:
            marks = (f"{goal}: **{'met' if ok else 'NOT met'}**" for goal, ok in self.goals)
            parts += ["Goals: " + "; ".join(marks), ""]
        parts += [self.meaning, "", f"Reproduce: `{self.command}`", ""]
        return "\n".join(parts)


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    import tensorflow as tf

    cpu = machine_cpu()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    import keras

    return {
        "CPU": cpu,
        "cores available": str(cores),
        "memory": mem,
        "GPUs": str(len(tf.config.list_physical_devices("GPU"))),
        "Python": platform.python_version(),
        "TensorFlow": tf.__version__,
        "Keras": keras.__version__,
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
        "oneDNN in use": _onednn(),
        "TF_CPU_ALLOCATOR_USE_BFC": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "(unset)"),
    }


def _cpuinfo_field(name: str) -> str | None:
    """The first value of `name` in /proc/cpuinfo (None where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_cpu() -> str:
    """The CPU's model name (`lscpu`'s), or "unknown CPU"."""
    return _cpuinfo_field("model name") or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (avx2, avx512_bf16, amx_tile ...)."""
    return set((_cpuinfo_field("flags") or "").split())


def _onednn() -> str:
    try:
        from tensorflow.python.util import _pywrap_util_port

        return str(bool(_pywrap_util_port.IsMklEnabled()))
    except (ImportError, AttributeError):
        return "unknown"
