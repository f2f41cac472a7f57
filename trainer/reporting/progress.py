"""The training progress bar: per-epoch steps, elapsed time, ETA, time per step, metrics.

Why not `keras.utils.Progbar`: it does time per step from `current` (updates once per compiled
loop are fine), but it has no start offset: resumed mid-epoch, its first `current` counts
steps this process never ran and its clock starts at construction (tracing included), so time
per step and ETA come out too small. It also takes every Linux stream for a terminal
(`"posix" in sys.modules`), writing `\\b`/`\\r` and colour codes into log files, prints every
value as %.4f (img/s as 1815.0663), and keeps its estimate private, which `max_loop_steps`
needs. Here every number comes from this bar's own clock and the global step: time per step is
the time between two updates divided by the steps run in between (from `start(step)` on), and
the ETA is the epoch's remaining steps times that.

On a terminal the bar is one line rewritten in place (`\\r`), ended at each epoch's end; on
anything else (CI, log files, nohup) it prints exactly one plain line per finished epoch, and
on `close()` one more for a partial last epoch, so logs stay readable.

Example::

    bar = ProgressBar(steps_per_epoch=390, total_steps=390 * 30)
    bar.start(restored_step)
    for each compiled loop:
        n = min(steps_per_loop, bar.max_loop_steps() or steps_per_loop)
        ...  # run n steps
        bar.update(step, {"loss": l, "accuracy": a, "lr": head_lr, "img/s": ips})
    bar.close()
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping


def format_step_time(seconds: float) -> str:
    """Time per step in the unit that keeps 1-3 digits: `850us`, `12ms`, `1.3s`."""
    micros = round(seconds * 1e6)
    if micros < 1000:
        return f"{micros}us"
    millis = round(seconds * 1e3)
    if millis < 1000:
        return f"{millis}ms"
    return f"{seconds:.1f}s"


def format_duration(seconds: float) -> str:
    """Whole seconds as `42s`, `1:05` (m:ss) or `1:01:05` (h:mm:ss)."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}:{secs:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_values(values: Mapping[str, float]) -> str:
    """`loss 0.6931  accuracy 0.5000  lr 1.14e-04  833 img/s` (other names: 4 digits)."""
    parts = []
    for name, value in values.items():
        if name in ("loss", "accuracy"):
            parts.append(f"{name} {value:.4f}")
        elif name == "lr":
            parts.append(f"lr {value:.2e}")
        elif name == "img/s":
            parts.append(f"{value:.0f} img/s")
        else:
            parts.append(f"{name} {value:.4g}")
    return "  ".join(parts)


class ProgressBar:
    """A per-epoch progress display fed with the global step after every compiled loop.

    Each epoch shows `Epoch E/N`, the epoch's steps done/total (the last epoch's total stops
    at `total_steps`), a bar (terminal only), the
    epoch's elapsed time and ETA, the time per step and the values passed to `update`. The
    line that ends an epoch shows the epoch's total time and its average time per step instead
    of the ETA. A run resumed mid-epoch times that epoch from `start(step)`, so its total covers
    only the steps this process ran.

    Args:
        steps_per_epoch: Steps in one epoch; epoch e (0-based) covers global steps
            (e * steps_per_epoch, (e + 1) * steps_per_epoch].
        total_steps: The global step at which training ends; N = ceil(total / per epoch).
        stream: Where to write; None means `sys.stdout` at the time of each write.
        tty: Rewrite one line in place; None asks `stream.isatty()`.
        clock: Seconds from an arbitrary origin, never decreasing.
        width: Characters inside the bar's brackets.

    Raises:
        ValueError: If `steps_per_epoch`, `total_steps` or `width` is below 1.
    """

    def __init__(
        self,
        steps_per_epoch: int,
        total_steps: int,
        *,
        stream=None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        width: int = 30,
    ):
        for name, value in (
            ("steps_per_epoch", steps_per_epoch),
            ("total_steps", total_steps),
            ("width", width),
        ):
            if value < 1:
                raise ValueError(f"Argument `{name}` must be >= 1. Received: {name}={value}")
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(total_steps)
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.width = int(width)
        self._stream = stream
        self._tty = tty
        self._clock = clock
        # The previous update (or the start): the origin of the next time-per-step measurement.
        self._mark_step: int | None = None
        self._mark_time = 0.0
        self._seconds_per_step: float | None = None
        # The epoch on display, where its timing began, and its latest state.
        self._epoch: int | None = None
        self._epoch_start_step = 0
        self._epoch_start_time = 0.0
        self._step = 0
        self._time = 0.0
        self._values: dict[str, float] = {}
        self._pending = False  # The epoch on display has no final line yet.
        self._line_len = 0  # Length of the line on a terminal, to blank what is left of it.

    @property
    def stream(self):
        """The output stream (`sys.stdout` at the time of the call unless one was given)."""
        return self._stream if self._stream is not None else sys.stdout

    @property
    def tty(self) -> bool:
        """Whether the line is rewritten in place."""
        if self._tty is not None:
            return self._tty
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def start(self, step: int) -> None:
        """Records the global step this process starts from (0, or the restored step) and now.

        Args:
            step: The global step reached before the first update of this process.

        Raises:
            ValueError: If `step` is outside [0, total_steps].
        """
        if not 0 <= step <= self.total_steps:
            raise ValueError(
                f"Argument `step` must be in [0, {self.total_steps}]. Received: step={step}"
            )
        self._mark_step = int(step)
        self._mark_time = self._clock()

    def update(self, step: int, values: dict[str, float]) -> None:
        """Shows the state after global step `step`.

        Args:
            step: The global step reached (a count of steps done).
            values: Name -> number; `loss`, `accuracy`, `lr` and `img/s` get their own formats.

        Raises:
            RuntimeError: If `start` was not called first.
            ValueError: If `step` does not exceed the previous step or exceeds `total_steps`.
        """
        if self._mark_step is None:
            raise RuntimeError("ProgressBar.start(step) must be called before update().")
        if not self._mark_step < step <= self.total_steps:
            raise ValueError(
                f"Argument `step` must be in ({self._mark_step}, {self.total_steps}]. "
                f"Received: step={step}"
            )
        now = self._clock()
        epoch = (step - 1) // self.steps_per_epoch
        if epoch != self._epoch:
            if self._pending:  # A loop crossed an epoch end: close the old epoch as it stood.
                self._finish()
            self._epoch = epoch
            self._epoch_start_step = self._mark_step
            self._epoch_start_time = self._mark_time
        self._seconds_per_step = (now - self._mark_time) / (step - self._mark_step)
        self._mark_step, self._mark_time = step, now
        self._step, self._time, self._values = step, now, dict(values)
        self._pending = True
        if step == self._epoch_end(epoch):
            self._finish()
        elif self.tty:
            self._write_in_place(self._render(final=False))

    def close(self) -> None:
        """Ends the display; the last epoch, if unfinished, gets its final line."""
        if self._pending:
            self._finish()

    def max_loop_steps(self, target_seconds: float = 2.0) -> int | None:
        """The most steps the next compiled loop should run for an update every `target_seconds`.

        Args:
            target_seconds: The longest wanted time between two updates of the bar.

        Returns:
            floor(target_seconds / measured time per step), at least 1; None when not on a
            terminal (nothing to refresh), before any measurement, or if steps took no time.

        Raises:
            ValueError: If `target_seconds` is not positive.
        """
        if not target_seconds > 0:
            raise ValueError(
                f"Argument `target_seconds` must be > 0. Received: target_seconds={target_seconds}"
            )
        if not self.tty or not self._seconds_per_step:
            return None
        # The epsilon keeps e.g. 2.0 / 0.05 from flooring to 39 through rounding error.
        return max(1, math.floor(target_seconds / self._seconds_per_step + 1e-9))

    def _epoch_end(self, epoch: int) -> int:
        # The run's last epoch ends early when total_steps is not a multiple of an epoch.
        return min((epoch + 1) * self.steps_per_epoch, self.total_steps)

    def _finish(self) -> None:
        line = self._render(final=True)
        if self.tty:
            self._write_in_place(line)
            self.stream.write("\n")
            self._line_len = 0
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._pending = False

    def _write_in_place(self, line: str) -> None:
        padding = " " * max(0, self._line_len - len(line))
        self.stream.write("\r" + line + padding)
        self.stream.flush()
        self._line_len = len(line)

    def _render(self, final: bool) -> str:
        first = self._epoch * self.steps_per_epoch
        position = self._step - first
        length = self._epoch_end(self._epoch) - first
        parts = [f"Epoch {self._epoch + 1}/{self.num_epochs}"]
        counts = f"{position:>{len(str(self.steps_per_epoch))}}/{length}"
        if self.tty:
            counts += f" [{self._bar(position, length)}]"
        parts.append(counts)
        elapsed = self._time - self._epoch_start_time
        if final:
            parts.append(f"total {format_duration(elapsed)}")
            per_step = elapsed / (self._step - self._epoch_start_step)
        else:
            per_step = self._seconds_per_step
            eta = (length - position) * per_step
            parts.append(f"elapsed {format_duration(elapsed)}")
            parts.append(f"ETA {format_duration(eta)}")
        parts.append(f"{format_step_time(per_step)}/step")
        if self._values:
            parts.append(format_values(self._values))
        return "  ".join(parts)

    def _bar(self, position: int, length: int) -> str:
        if position >= length:
            return "=" * self.width
        filled = self.width * position // length
        return "=" * filled + ">" + "." * (self.width - filled - 1)
