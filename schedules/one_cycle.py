"""OneCycle: fastai's one-cycle policy (learning rate and momentum), graph-safe.

Also home of the helpers the other step-function schedules here share: a step converted to a
float64 tensor without passing through float32, and an integer-argument check.
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from schedules.sgdr import _fail, _number


def _integer(name, value, minimum):
    """Returns `value` (an integral number >= minimum) as a Python int, or raises ValueError."""
    value = _number(name, value)
    if value < minimum:
        _fail(name, value, f">= {minimum}")
    if value != int(value):
        _fail(name, value, "an integer")
    return int(value)


def _float64_step(step):
    """`step` (any shape; Python number, array, tensor or Variable) as a float64 tensor >= 0."""
    if isinstance(step, (numbers.Number, np.ndarray, list, tuple)):
        # A Python float would become float32 in convert_to_tensor and lose the step.
        s = tf.constant(np.asarray(step, dtype=np.float64))
    else:
        s = tf.cast(step, tf.float64)
    return tf.maximum(s, 0.0)


def _cosine_from_to(a, b, q):
    """Half-cosine from `a` (at q = 0) to `b` (at q = 1); `q` a float64 tensor."""
    return a + (b - a) * (1.0 - tf.cos(math.pi * q)) / 2.0


@keras.saving.register_keras_serializable(package="lrtech")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """The 1cycle policy: cosine warm-up to `max_lr`, cosine annealing far below the start.

    From Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
    Learning Rates", 2017 (arXiv:1708.07120) and Smith, "A disciplined approach to neural
    network hyper-parameters: Part 1 -- learning rate, batch size, momentum, and weight
    decay", 2018 (arXiv:1803.09820), in the cosine form of fastai's `fit_one_cycle`, with its
    defaults. For step `s` (an optimizer step, i.e. one batch) let `p = s / total_steps` and

        cos_from_to(a, b, q) = a + (b - a) * (1 - cos(pi * q)) / 2    # a at q=0, b at q=1

    * `p < pct_start`: `lr = cos_from_to(max_lr / div, max_lr, p / pct_start)`;
    * `pct_start <= p < 1`:
      `lr = cos_from_to(max_lr, max_lr / div_final, (p - pct_start) / (1 - pct_start))`;
    * `s >= total_steps`: `lr = max_lr / div_final`, held.

    So `lr(0) = max_lr / div` (or `max_lr` when `pct_start = 0`), the peak `max_lr` is at
    `s = pct_start * total_steps` (exactly, when that is an integer), and the final rate is
    reached at `s = total_steps`. `momentum(step)` follows the same two phases from
    `moms[0]` down to `moms[1]` and back up to `moms[2]` (held past the end): the value an
    optimizer uses as SGD momentum or Adam's `beta_1`. Steps may be floats or tensors of any
    shape; the arithmetic is float64 and the result float32.

    Differences from PyTorch's `torch.optim.lr_scheduler.OneCycleLR(max_lr, total_steps,
    pct_start=0.3, div_factor=25.0, final_div_factor=1e4, base_momentum=0.85,
    max_momentum=0.95, three_phase=False)`:

    * Defaults: PyTorch's `pct_start` is 0.3 (here 0.25); its `final_div_factor` divides the
      *initial* rate, so its final rate is `max_lr / (25 * 1e4) = max_lr / 2.5e5`, where
      `div_final` here divides `max_lr` (default final rate `max_lr / 1e5`). `div_factor=25`
      equals `div`, and `(max_momentum, base_momentum, max_momentum) = (0.95, 0.85, 0.95)`
      equals the default `moms`.
    * Phase ends: PyTorch's phase 1 ends (at `max_lr`) at step `pct_start * total_steps - 1`
      and phase 2 at step `total_steps - 1`, which is the last step it allows and reaches the
      final rate exactly. Here (as in fastai) the peak is at `pct_start * total_steps` and the
      final rate is first reached at step `total_steps`, one step after a run of
      `total_steps` steps ends. PyTorch refuses to step beyond `total_steps` (ValueError);
      here the final rate is held. PyTorch's curve with `T` total steps (`T >= 2`,
      `pct_start * T >= 1`) is, at its steps `0 .. T - 1`, exactly `OneCycle(max_lr, T - 1,
      pct_start=(pct_start * T - 1) / (T - 1), div=div_factor, div_final=div_factor *
      final_div_factor, moms=(max_momentum, base_momentum, max_momentum))`.
    * `three_phase=True` (up, back down to the initial rate, then annealing to the final
      rate) has no counterpart here, nor has `anneal_strategy="linear"`.

    Example:

        schedule = OneCycle(max_lr=1e-3, total_steps=1000)
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
        float(schedule(0))     # 4e-05, max_lr / div
        float(schedule(250))   # 0.001, the peak (pct_start * total_steps)
        float(schedule(1000))  # 1e-08, max_lr / div_final, held from here on
        float(schedule.momentum(250))  # 0.85, moms[1]

    Args:
        max_lr: Peak learning rate (finite, > 0).
        total_steps: Length of the cycle in steps (an integer >= 1).
        pct_start: Fraction of `total_steps` spent warming up, in [0, 1).
        div: The first step's learning rate is `max_lr / div` (finite, >= 1).
        div_final: The final learning rate is `max_lr / div_final` (finite, >= 1).
        moms: Momentum at the start, at the peak and at the end: 3 numbers in [0, 1).
        name: Name scope of the ops.

    Raises:
        ValueError: An argument is not a finite number or is out of range.
    """

    def __init__(
        self,
        max_lr,
        total_steps,
        pct_start=0.25,
        div=25.0,
        div_final=1e5,
        moms=(0.95, 0.85, 0.95),
        name="OneCycle",
    ):
        super().__init__()
        max_lr = _number("max_lr", max_lr)
        total_steps = _integer("total_steps", total_steps, 1)
        pct_start = _number("pct_start", pct_start)
        div = _number("div", div)
        div_final = _number("div_final", div_final)
        if max_lr <= 0:
            _fail("max_lr", max_lr, "> 0")
        if not 0 <= pct_start < 1:
            _fail("pct_start", pct_start, "in [0, 1)")
        if div < 1:
            _fail("div", div, ">= 1")
        if div_final < 1:
            _fail("div_final", div_final, ">= 1")
        self.moms = self._checked_moms(moms)
        if name is not None and not isinstance(name, str):
            _fail("name", name, "a string")
        self.max_lr = max_lr
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.div = div
        self.div_final = div_final
        self.name = name

    @staticmethod
    def _checked_moms(moms):
        if isinstance(moms, (list, tuple)) and len(moms) == 3:
            values = tuple(
                m
                for m in moms
                if not isinstance(m, bool)
                and isinstance(m, numbers.Real)
                and math.isfinite(m)
                and 0 <= m < 1
            )
            if len(values) == 3:
                return tuple(float(m) for m in values)
        _fail("moms", moms, "3 numbers in [0, 1)")

    @property
    def peak_lr(self):
        """The highest learning rate of the schedule, `max_lr`."""
        return self.max_lr

    def get_config(self):
        """Returns every constructor argument, so `OneCycle(**config)` rebuilds the schedule."""
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div": self.div,
            "div_final": self.div_final,
            "moms": self.moms,
            "name": self.name,
        }

    def __call__(self, step):
        """Learning rate at `step`: a float32 tensor of `step`'s shape (as `SGDR.__call__`)."""
        with tf.name_scope(self.name or "OneCycle"):
            lr = self._two_phases(
                _float64_step(step),
                self.max_lr / self.div,
                self.max_lr,
                self.max_lr / self.div_final,
            )
            return tf.cast(lr, tf.float32)

    def momentum(self, step):
        """Momentum (or Adam's `beta_1`) at `step`: `moms[0]` -> `moms[1]` -> `moms[2]`.

        Args:
            step: As for `__call__`, typically the optimizer's `iterations`.

        Returns:
            A float32 tensor of the same shape as `step`.
        """
        with tf.name_scope((self.name or "OneCycle") + "_momentum"):
            return tf.cast(self._two_phases(_float64_step(step), *self.moms), tf.float32)

    def _two_phases(self, s, start, middle, end):
        """float64 `start` -> `middle` over the first pct_start, -> `end` over the rest."""
        p = s / float(self.total_steps)
        pct = self.pct_start
        value = _cosine_from_to(middle, end, (p - pct) / (1.0 - pct))
        if pct > 0:  # a Python constant: no control flow on tensors, no 0 / 0
            value = tf.where(p < pct, _cosine_from_to(start, middle, p / pct), value)
        return tf.where(s >= float(self.total_steps), tf.constant(end, tf.float64), value)
