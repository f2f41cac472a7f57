"""The learning-rate range test (Smith; fastai's `lr_find`): sweep, record, suggest.

Train for at most `num_steps` batches while the learning rate grows exponentially from
`start` towards `end` (step i runs at `start * (end / start) ** (i / num_steps)`), record a
debiased exponential moving average of the loss, stop when it exceeds `diverge` times its
minimum, and suggest a maximum learning rate from the curve. From L. N. Smith, "Cyclical
Learning Rates for Training Neural Networks", WACV 2017 (section 3.3), as fastai implements
it (fastai/callback/schedule.py: `LRFinder`, `valley`, `steep`, `minimum`, `slide`).

The parts:

* `ExponentialRange`: the sweep as a Keras `LearningRateSchedule` of the optimizer step.
* `RangeTest`: plain-Python recorder (smoothing, stop rule); any loop can drive it.
* `suggestions(lrs, losses)`: fastai's four suggestions on the trimmed curve.
* `LRFinderResult`: the curve and the suggestions; JSON, PNG and a one-line summary.
* `lr_find(model, dataset, optimizer)`: the whole test for a custom-loop user. The model's
  variables and the given optimizer are left exactly as they were.
  `trainer.lr_find.callbacks.LRFinder` does the same inside `model.fit`.

Usage:

    result = lr_find(model, train_ds, segmented(make("adam", 1e-3), segment_of, lr_mults))
    print(result.format_line())  # suggested --max_lr=0.0012 (valley; steep ...)
    result.plot("lr_find.png")
    max_lr = result.suggested_max_lr
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from trainer.errors import UserError

STOP_REASONS = ("diverged", "non-finite loss", "completed", "incomplete")
MIN_NUM_STEPS = 5
# fastai trims the curve before suggesting: the first 10% (still at the noise floor of a
# barely moving model) and the last 5 points (already diverging).
_TRIM_END = 5
# fastai's slide rule compares gradients 15 points apart, so it needs 16 points to start.
_SLIDE_LR_DIFF = 15
_SLIDE_THRESH = 0.005
MIN_SUGGESTION_POINTS = _SLIDE_LR_DIFF + 1


def _fail(name, value, requirement):
    raise ValueError(f"Argument `{name}` must be {requirement}. Received: {name}={value!r}")


def _real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        _fail(name, value, "a number")
    return float(value)


def _check_sweep(start, end, num_steps):
    """Validates the sweep's arguments; returns them as (float, float, int)."""
    start, end = _real("start", start), _real("end", end)
    if not (math.isfinite(start) and start > 0):
        _fail("start", start, "a finite number > 0")
    if not (math.isfinite(end) and end > start):
        _fail("end", end, f"a finite number > start ({start:g})")
    if (
        isinstance(num_steps, bool)
        or not isinstance(num_steps, numbers.Real)
        or not math.isfinite(num_steps)
        or num_steps != int(num_steps)
        or num_steps < MIN_NUM_STEPS
    ):
        _fail("num_steps", num_steps, f"an integer >= {MIN_NUM_STEPS}")
    return start, end, int(num_steps)


@keras.saving.register_keras_serializable(package="lrtech")
class ExponentialRange(keras.optimizers.schedules.LearningRateSchedule):
    """The range test's sweep: an exponentially growing learning rate.

        lr(step) = start * (end / start) ** (step / num_steps)

    fastai's `SchedExp(start, end)` at position `step / num_steps`: step 0 runs at `start`,
    step `num_steps - 1` just below `end` (reached at step `num_steps`; later steps keep
    growing). Computed in float64, returned as float32.

    Example:

        optimizer = keras.optimizers.SGD(ExponentialRange(1e-7, 10.0, 100))
        float(ExponentialRange(1e-7, 10.0, 100)(50))  # 1e-07 * 1e8 ** 0.5 = 1e-3

    Args:
        start: Learning rate at step 0 (finite, > 0).
        end: Learning rate at step `num_steps` (finite, > start).
        num_steps: Number of steps of the sweep (integer >= 5).
        name: Name scope of the ops.

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    def __init__(self, start, end, num_steps, name="ExponentialRange"):
        super().__init__()
        self.start, self.end, self.num_steps = _check_sweep(start, end, num_steps)
        if name is not None and not isinstance(name, str):
            _fail("name", name, "a string")
        self.name = name

    def __call__(self, step):
        with tf.name_scope(self.name or "ExponentialRange"):
            if isinstance(step, (numbers.Number, np.ndarray, list, tuple)):
                s = tf.constant(np.asarray(step, dtype=np.float64))
            else:
                s = tf.cast(step, tf.float64)
            ratio = tf.constant(self.end / self.start, tf.float64)
            lr = self.start * tf.pow(ratio, s / float(self.num_steps))
            return tf.cast(lr, tf.float32)

    def get_config(self):
        """Returns every constructor argument."""
        return {
            "start": self.start,
            "end": self.end,
            "num_steps": self.num_steps,
            "name": self.name,
        }


class RangeTest:
    """Records a range test and decides when it stops; plain Python, no TensorFlow.

    `record(lr, loss)` keeps fastai's smoothed loss, a debiased exponential moving average:
    `avg = beta * avg + (1 - beta) * loss`, `smoothed = avg / (1 - beta ** n)` after n
    points. It returns False ("stop") when the smoothed loss exceeds `diverge` times its
    minimum so far (that point is kept), when the loss is not finite (that point is not
    kept), or when `num_steps` points are recorded. The rule assumes a loss >= 0.

    Args:
        start, end, num_steps: The sweep, as in `ExponentialRange`.
        beta: Smoothing factor in [0, 1); 0 records the raw loss.
        diverge: Stop factor (> 1; `math.inf` never stops on divergence).

    Attributes:
        lrs: Learning rate of each recorded step.
        losses: Smoothed loss of each recorded step.
        raw_losses: Loss of each recorded step as given.
        stop_reason: None while running, then "diverged", "non-finite loss" or "completed".
    """

    def __init__(self, start=1e-7, end=10.0, num_steps=100, beta=0.98, diverge=4.0):
        self.start, self.end, self.num_steps = _check_sweep(start, end, num_steps)
        self.beta, self.diverge = _real("beta", beta), _real("diverge", diverge)
        if not 0 <= self.beta < 1:
            _fail("beta", beta, "in [0, 1)")
        if not self.diverge > 1:
            _fail("diverge", diverge, "> 1")
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.raw_losses: list[float] = []
        self.stop_reason: str | None = None
        self._avg = 0.0
        self._best = math.inf

    def lr(self, i: int) -> float:
        """The learning rate of step `i` (the formula of `ExponentialRange`)."""
        return self.start * (self.end / self.start) ** (i / self.num_steps)

    def record(self, lr, loss) -> bool:
        """Records one step; returns True to go on, False to stop (see the class docstring)."""
        if self.stop_reason is not None:
            raise RuntimeError(f"RangeTest.record: the test has stopped ({self.stop_reason})")
        loss = float(loss)
        if not math.isfinite(loss):
            self.stop_reason = "non-finite loss"
            return False
        self._avg = self.beta * self._avg + (1.0 - self.beta) * loss
        smoothed = self._avg / (1.0 - self.beta ** (len(self.losses) + 1))
        self.lrs.append(float(lr))
        self.losses.append(smoothed)
        self.raw_losses.append(loss)
        self._best = min(self._best, smoothed)
        if smoothed > self.diverge * self._best:
            self.stop_reason = "diverged"
        elif len(self.losses) >= self.num_steps:
            self.stop_reason = "completed"
        return self.stop_reason is None

    def result(self) -> LRFinderResult:
        """The curve so far with its suggestions (empty if there are too few points).

        The stop reason is "incomplete" if the test has not stopped (the data ran out).
        """
        try:
            found = suggestions(self.lrs, self.losses)
        except UserError:
            found = {}  # `suggested_max_lr` raises the reason
        return LRFinderResult(
            lrs=list(self.lrs),
            losses=list(self.losses),
            raw_losses=list(self.raw_losses),
            suggestions=found,
            stop_reason=self.stop_reason or "incomplete",
            start=self.start,
            end=self.end,
            num_steps=self.num_steps,
            beta=self.beta,
            diverge=self.diverge,
        )


# ---- Suggestions (fastai's definitions) ------------------------------------------------


def suggestions(lrs, losses) -> dict[str, float]:
    """fastai's four learning-rate suggestions from a range-test curve.

    Like fastai's `lr_find`, the curve is first trimmed to `[n // 10 : n - 5]` and cut at its
    first non-finite loss; then on the remaining points (n is the number of points recorded;
    fastai skips `num_it // 10` of the planned steps, the same unless the test stopped early):

    * "valley": fastai's longest-valley rule: the longest strictly decreasing run of losses
      (as a subsequence), and the point about 1/2 of the way into it (`_valley`).
    * "steep": the learning rate where d loss / d log(lr) is most negative.
    * "minimum": the learning rate of the smallest loss, divided by 10.
    * "slide": fastai's interval slide rule (`_slide`).

    Args:
        lrs: Learning rates, positive and strictly increasing.
        losses: The (smoothed) loss at each learning rate.

    Returns:
        {"valley": lr, "steep": lr, "minimum": lr, "slide": lr} as Python floats.

    Raises:
        UserError: (a ValueError) fewer than 16 points remain after trimming.
        ValueError: lrs and losses differ in length, or lrs are not positive and increasing.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if lrs.ndim != 1 or lrs.shape != losses.shape:
        raise ValueError(
            f"suggestions: lrs and losses must be 1-D of one length; got shapes"
            f" {lrs.shape} and {losses.shape}"
        )
    if lrs.size and not (np.all(np.isfinite(lrs)) and lrs[0] > 0 and np.all(np.diff(lrs) > 0)):
        raise ValueError("suggestions: lrs must be finite, > 0 and strictly increasing")
    n = lrs.size
    lrs, losses = lrs[n // 10 : max(n - _TRIM_END, 0)], losses[n // 10 : max(n - _TRIM_END, 0)]
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        lrs, losses = lrs[: bad[0]], losses[: bad[0]]
    if lrs.size < MIN_SUGGESTION_POINTS:
        raise UserError(
            f"LR range test: recorded too few steps to suggest a learning rate ({n} points,"
            f" {lrs.size} after dropping the first 10% and the last {_TRIM_END}; need"
            f" {MIN_SUGGESTION_POINTS}): lower --lr_find_start or raise --lr_find_steps"
        )
    log_slope = np.diff(losses) / np.diff(np.log(lrs))
    return {
        "valley": float(lrs[_valley(losses)]),
        "steep": float(lrs[int(np.argmin(log_slope))]),
        "minimum": float(lrs[int(np.argmin(losses))]) / 10.0,
        "slide": _slide(lrs, losses),
    }


def _valley(losses: np.ndarray) -> int:
    """Index of fastai's valley point.

    lds[i] is the length of the longest strictly decreasing subsequence ending at i (fastai's
    O(n^2) recurrence: 1 + the largest lds[j], j < i, with losses[j] > losses[i]). fastai
    tracks the best valley inside its inner loop: `max_end` moves to i the first time lds[i]
    exceeds lds[max_end], and `max_start = max_end - lds[max_end]` is taken at that moment.
    Since lds[i] <= 1 + max(lds[:i]), the first value that exceeds the best is already the
    final lds[i]; so `max_end` is the first index of the largest lds and `max_start` uses its
    final value. With `sections = (max_end - max_start) / 3` the point is
    `max_start + int(sections) + int(sections / 2)`.

    One deliberate difference: where fastai's index comes out as -1 (the longest valley is
    two points at the very start, i.e. the loss only rose) Python would wrap it to the last,
    largest learning rate; here it is 0.
    """
    n = losses.size
    lds = np.ones(n, dtype=np.int64)
    for i in range(1, n):
        above = losses[:i] > losses[i]
        if above.any():
            lds[i] = lds[:i][above].max() + 1
    max_end = int(np.argmax(lds))  # the first index of the maximum
    # fastai starts from max_start = max_end = 0 and updates both only when lds rises past 1.
    max_start = max_end - int(lds[max_end]) if max_end > 0 else 0
    sections = (max_end - max_start) / 3
    return max(max_start + int(sections) + int(sections / 2), 0)


def _slide(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's interval slide rule (lr_diff=15, thresh=0.005, adjust_value=1).

    Walks a pair of points 15 apart from the right end of the curve to the left while the
    loss gradients (per point, `numpy.gradient`) at the pair differ by more than `thresh`,
    and suggests the learning rate of the left point of the last pair that still did.
    """
    grad = np.gradient(losses)
    right, left = -1, -1 - _SLIDE_LR_DIFF
    local_min_lr = lrs[left]
    while left >= -losses.size and abs(grad[right] - grad[left]) > _SLIDE_THRESH:
        local_min_lr = lrs[left]
        right, left = right - 1, left - 1
    return float(local_min_lr)


# ---- The result --------------------------------------------------------------------------


@dataclasses.dataclass
class LRFinderResult:
    """A range test's curve, its suggestions and why it stopped.

    Attributes:
        lrs: Learning rate of each recorded step.
        losses: Smoothed loss of each recorded step.
        raw_losses: Loss of each recorded step.
        suggestions: {"valley", "steep", "minimum", "slide"} -> learning rate; empty if the
            test recorded too few steps.
        stop_reason: "diverged", "non-finite loss", "completed" or "incomplete" (the data
            ended before num_steps, e.g. too few epochs for `trainer.lr_find.callbacks.LRFinder`).
        start, end, num_steps, beta, diverge: The test's settings.
    """

    lrs: list
    losses: list
    raw_losses: list
    suggestions: dict
    stop_reason: str
    start: float | None = None
    end: float | None = None
    num_steps: int | None = None
    beta: float | None = None
    diverge: float | None = None

    @property
    def suggested_max_lr(self) -> float:
        """The valley suggestion, fastai's default (`suggestion("valley")`)."""
        return self.suggestion("valley")

    def suggestion(self, name: str) -> float:
        """One of the suggestions: "valley", "steep", "minimum" (/10) or "slide".

        Raises:
            UserError: (a ValueError) the test recorded too few steps to suggest one.
        """
        if name not in self.suggestions:
            suggestions(self.lrs, self.losses)  # raises the reason
            raise UserError("LR range test: no suggestion was computed")
        return self.suggestions[name]

    def format_line(self) -> str:
        """One line for the log, e.g. "suggested --max_lr=1.2e-03 (valley; steep 3e-03, ...)"."""
        if "valley" not in self.suggestions:
            try:
                suggestions(self.lrs, self.losses)
            except ValueError as e:
                return f"no suggested --max_lr: {e}"
        s = self.suggestions
        return (
            f"suggested --max_lr={s['valley']:.3g} (valley; steep {s['steep']:.3g},"
            f" minimum/10 {s['minimum']:.3g}, slide {s['slide']:.3g})"
        )

    def to_dict(self) -> dict:
        """The result as JSON-ready Python values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record) -> LRFinderResult:
        """The result `to_dict` gave; ValueError naming what is wrong with `record`."""
        if not isinstance(record, dict):
            raise ValueError(f"not a JSON object but {type(record).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(
            {"lrs", "losses", "raw_losses", "suggestions", "stop_reason"} - set(record)
        )
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        values = {k: v for k, v in record.items() if k in names}
        lrs, losses = values["lrs"], values["losses"]
        if not (isinstance(lrs, list) and isinstance(losses, list) and len(lrs) == len(losses)):
            raise ValueError("lrs and losses must be lists of one length")
        if not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in lrs):
            raise ValueError("lrs must be positive finite numbers")
        suggested = values["suggestions"]
        if not isinstance(suggested, dict) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in suggested.values()
        ):
            raise ValueError("suggestions must map names to positive finite learning rates")
        return cls(**values)

    def to_json(self, path: str) -> str:
        """Writes `to_dict()` as JSON to `path` atomically (temporary file, rename)."""
        from trainer.run_dir import files as run_dir

        run_dir.write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def plot(self, path: str) -> str:
        """Writes a PNG of smoothed loss against learning rate (log axis), suggestions marked.

        The last 5 points are left out, as in fastai's plot (they are usually the divergence).

        Raises:
            ImportError: matplotlib is missing (pip install -e ".[plots]").
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as e:
            from schedules.plot import INSTALL_HINT, MissingMatplotlib

            raise MissingMatplotlib(INSTALL_HINT) from e
        # A Figure on its own Agg canvas: no pyplot, no change to the global backend.
        fig = Figure(figsize=(7, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        # Without the last 5 points, like fastai's plot: the divergence would flatten the rest.
        n = len(self.lrs) - _TRIM_END if len(self.lrs) > 2 * _TRIM_END else len(self.lrs)
        ax.plot(self.lrs[:n], self.losses[:n], color="C0", label="smoothed loss")
        markers = {"valley": "o", "steep": "^", "minimum": "s", "slide": "D"}
        for i, (name, lr) in enumerate(self.suggestions.items()):
            loss = np.interp(np.log(lr), np.log(self.lrs), self.losses)
            marker = markers.get(name, "x")
            label = f"{'minimum/10' if name == 'minimum' else name} {lr:.1e}"
            ax.plot([lr], [loss], linestyle="none", marker=marker, color=f"C{i + 1}", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        ax.set_title(f"LR range test ({self.stop_reason}, {len(self.lrs)} steps)")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        from trainer.run_dir import files as run_dir

        buffer = io.BytesIO()  # matplotlib writes local files only, and not atomically
        fig.savefig(buffer, format="png")
        run_dir.write_file(path, buffer.getvalue())
        return path
