"""SGDR: cosine annealing with warm restarts, exact at any step count.

The schedule runs in TensorFlow ops (graph-safe, elementwise on any step tensor) with float64
arithmetic inside; the cycle boundaries are also available in plain Python (`restart_steps`,
`cycle_at`) for drivers that act at restarts, e.g. to save a snapshot.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import keras
import numpy as np
import tensorflow as tf

# Below this cycle_mult, `m**k - 1` cancels catastrophically (relative error ~ eps/(m-1)), so
# cycle starts use `expm1(k * log1p(m - 1))` instead. At and above it the pow form is kept
# because it is exact for "dyadic" multipliers (1.5, 2, 3, ...) whose starts are integers.
_POW_FORM_MIN_MULT = 1.0625
# Python-side tie breaks use exact rationals; m**k for a 53-bit m grows by ~53 bits per cycle,
# so past this many bits the float64 answer is kept (only reachable with m very close to 1).
_EXACT_MAX_BITS = 1 << 20
# A float64 cycle start is trusted when it is farther than this (relative) from the step.
_TIE_TOLERANCE = 1e-9


def _number(name, value):
    """Returns `value` as a finite Python number, or raises a Keras-style ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Argument `{name}` must be a number. Received: {name}={value!r}")
    if not math.isfinite(value):
        raise ValueError(f"Argument `{name}` must be finite. Received: {name}={value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _fail(name, value, requirement):
    raise ValueError(f"Argument `{name}` must be {requirement}. Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package="lrtech")
class SGDR(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing with warm restarts (SGDR), optional linear warmup and peak decay.

    From Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
    ICLR 2017. For step `s` (an optimizer step, i.e. one batch):

    * warmup, `s < warmup_steps`: `lr = min_lr + (max_lr - min_lr) * s / warmup_steps`;
    * then with `u = s - warmup_steps`, cycle `k = 0, 1, ...` covers `u` in `[B_k, B_k + T_k)`
      where `T_k = first_cycle_steps * cycle_mult**k` and `B_k = T_0 + ... + T_{k-1}`.
      With `t = (u - B_k) / T_k` and `peak_k = max(min_lr, max_lr * max_lr_decay**k)`:

          lr = min_lr + 0.5 * (peak_k - min_lr) * (1 + cos(pi * t))

    Each cycle starts at its peak; the first step at or past `B_{k+1}` restarts at
    `peak_{k+1}`. The cycle index is exact (float64 closed form plus a correction step
    checking `B_k <= u < B_{k+1}`), so restarts land on the right integer step at every step
    count up to 10**9 and beyond; the result is float32.

    Differences from `keras.optimizers.schedules.CosineDecayRestarts(initial_learning_rate,
    first_decay_steps, t_mul, m_mul, alpha)`: here `max_lr_decay` scales the *peak* (the
    floor `min_lr` stays put) and `min_lr` is an absolute learning rate, whereas `m_mul` scales
    the whole amplitude and `alpha` is a fraction of the initial rate. With
    `max_lr_decay=1`, `warmup_steps=0` both give the same curve (`alpha = min_lr / max_lr`),
    except that Keras' float32 arithmetic restarts one step early near step 4,095,000
    (T0=1000, t_mul=2) and loses resolution past 2**24 steps. It also matches PyTorch's
    `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)` stepped once per batch.

    Example:

        schedule = SGDR(max_lr=1e-2, first_cycle_steps=100, cycle_mult=2.0)
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
        schedule.restart_steps(700)  # [0, 100, 300]
        float(schedule(300))  # 0.01, the first step of cycle 2

    Args:
        max_lr: Peak learning rate of the first cycle (> 0).
        first_cycle_steps: Length of cycle 0 in steps (>= 1; need not be an integer).
        min_lr: Absolute floor every cycle anneals towards (0 <= min_lr <= max_lr).
        cycle_mult: Each cycle is `cycle_mult` times longer than the previous one (>= 1).
        max_lr_decay: Each cycle's peak is `max_lr_decay` times the previous one, in (0, 1].
        warmup_steps: Integer steps of linear warmup from `min_lr` to `max_lr` (>= 0).
        name: Name scope of the ops.

    Raises:
        ValueError: An argument is not a finite number or is out of range.
    """

    def __init__(
        self,
        max_lr,
        first_cycle_steps,
        min_lr=0.0,
        cycle_mult=1.0,
        max_lr_decay=1.0,
        warmup_steps=0,
        name="SGDR",
    ):
        super().__init__()
        max_lr = _number("max_lr", max_lr)
        first_cycle_steps = _number("first_cycle_steps", first_cycle_steps)
        min_lr = _number("min_lr", min_lr)
        cycle_mult = _number("cycle_mult", cycle_mult)
        max_lr_decay = _number("max_lr_decay", max_lr_decay)
        warmup_steps = _number("warmup_steps", warmup_steps)
        if max_lr <= 0:
            _fail("max_lr", max_lr, "> 0")
        if first_cycle_steps < 1:
            _fail("first_cycle_steps", first_cycle_steps, ">= 1")
        if min_lr < 0:
            _fail("min_lr", min_lr, ">= 0")
        if min_lr > max_lr:
            _fail("min_lr", min_lr, f"<= max_lr ({max_lr})")
        if cycle_mult < 1:
            _fail("cycle_mult", cycle_mult, ">= 1")
        if not 0 < max_lr_decay <= 1:
            _fail("max_lr_decay", max_lr_decay, "in (0, 1]")
        if warmup_steps < 0:
            _fail("warmup_steps", warmup_steps, ">= 0")
        if warmup_steps != int(warmup_steps):
            _fail("warmup_steps", warmup_steps, "an integer")
        if name is not None and not isinstance(name, str):
            _fail("name", name, "a string")
        self.max_lr = max_lr
        self.first_cycle_steps = first_cycle_steps
        self.min_lr = min_lr
        self.cycle_mult = cycle_mult
        self.max_lr_decay = max_lr_decay
        self.warmup_steps = int(warmup_steps)
        self.name = name

    def get_config(self):
        """Returns every constructor argument, so `SGDR(**config)` rebuilds this schedule."""
        return {
            "max_lr": self.max_lr,
            "first_cycle_steps": self.first_cycle_steps,
            "min_lr": self.min_lr,
            "cycle_mult": self.cycle_mult,
            "max_lr_decay": self.max_lr_decay,
            "warmup_steps": self.warmup_steps,
            "name": self.name,
        }

    # ---- TensorFlow: the learning rate -------------------------------------------------

    def __call__(self, step):
        """Learning rate at `step` (any shape; int or float tensor, Variable or Python number).

        Returns:
            A float32 tensor of the same shape as `step`.
        """
        with tf.name_scope(self.name or "SGDR"):
            if isinstance(step, (numbers.Number, np.ndarray, list, tuple)):
                # A Python float would become float32 in convert_to_tensor and lose the step.
                s = tf.constant(np.asarray(step, dtype=np.float64))
            else:
                s = tf.cast(step, tf.float64)
            s = tf.maximum(s, 0.0)
            warmup = float(self.warmup_steps)
            lr = self._annealed(tf.maximum(s - warmup, 0.0))
            if self.warmup_steps > 0:  # a Python constant: no control flow on tensors
                ramp = self.min_lr + (self.max_lr - self.min_lr) * (s / warmup)
                lr = tf.where(s < warmup, ramp, lr)
            return tf.cast(lr, tf.float32)

    def _annealed(self, u):
        """Cosine part at float64 position `u` (steps since the end of warmup)."""
        k = self._cycle_index(u)
        t = (u - self._cycle_start(k)) / (self.first_cycle_steps * tf.pow(self._m(), k))
        peak = tf.maximum(
            tf.constant(self.min_lr, tf.float64),
            self.max_lr * tf.pow(tf.constant(self.max_lr_decay, tf.float64), k),
        )
        return self.min_lr + 0.5 * (peak - self.min_lr) * (1.0 + tf.cos(math.pi * t))

    def _m(self):
        return tf.constant(self.cycle_mult, tf.float64)

    def _cycle_index(self, u):
        """Exact float64 cycle index k with B_k <= u < B_{k+1}."""
        t0, m = float(self.first_cycle_steps), self.cycle_mult
        if m == 1.0:
            k = tf.floor(u / t0)
        else:
            k = tf.floor(tf.math.log1p(u * (m - 1.0) / t0) / math.log1p(m - 1.0))
            k = tf.maximum(k, 0.0)
        # The closed form can be one off where u sits on (or within rounding of) a boundary.
        k = tf.where((k > 0) & (u < self._cycle_start(k)), k - 1.0, k)
        return tf.where(u >= self._cycle_start(k + 1.0), k + 1.0, k)

    def _cycle_start(self, k):
        """B_k as a float64 tensor (see `_POW_FORM_MIN_MULT` for the choice of formula)."""
        t0, m = float(self.first_cycle_steps), self.cycle_mult
        if m == 1.0:
            return k * t0
        if m >= _POW_FORM_MIN_MULT:
            return t0 * (tf.pow(self._m(), k) - 1.0) / (m - 1.0)
        return t0 * tf.math.expm1(k * math.log1p(m - 1.0)) / (m - 1.0)

    # ---- Plain Python: where cycles start ---------------------------------------------

    def _start_float(self, k):
        t0, m = float(self.first_cycle_steps), self.cycle_mult
        if m == 1.0:
            return k * t0
        if m >= _POW_FORM_MIN_MULT:
            return t0 * (m**k - 1.0) / (m - 1.0)
        return t0 * math.expm1(k * math.log1p(m - 1.0)) / (m - 1.0)

    def _start_exact(self, k):
        """B_k as a Fraction, or None when that would take too many bits."""
        t0, m = Fraction(self.first_cycle_steps), Fraction(self.cycle_mult)
        if m == 1:
            return k * t0
        if m.denominator.bit_length() * k > _EXACT_MAX_BITS:
            return None
        return t0 * (m**k - 1) / (m - 1)

    def _reached(self, u, k):
        """Whether position `u` (a Python number) is at or past the start of cycle `k`."""
        if k <= 0:
            return True
        approx = self._start_float(k)
        if abs(u - approx) > _TIE_TOLERANCE * max(1.0, approx):
            return u > approx
        exact = self._start_exact(k)
        return u >= approx if exact is None else Fraction(u) >= exact

    def _cycle_of(self, u):
        """Cycle index containing position `u >= 0`, decided exactly."""
        t0, m = float(self.first_cycle_steps), self.cycle_mult
        if m == 1.0:
            k = int(u // t0)
        else:
            k = max(0, int(math.log1p(u * (m - 1.0) / t0) / math.log1p(m - 1.0)))
        while k > 0 and not self._reached(u, k):
            k -= 1
        while self._reached(u, k + 1):
            k += 1
        return k

    def cycle_at(self, step):
        """Index of the cycle that `step` belongs to; warmup steps count as cycle 0.

        Pure Python and exact, consistent with `__call__`: a new cycle begins exactly at the
        steps returned by `restart_steps`.

        Args:
            step: A Python int or float step (negative steps count as step 0).

        Returns:
            The cycle index k >= 0 as a Python int.
        """
        step = _number("step", step)
        return self._cycle_of(max(0, step - self.warmup_steps))

    def restart_steps(self, total_steps):
        """Integer steps `s < total_steps` at which a cycle starts, in increasing order.

        Cycle 0 starts at `warmup_steps`; cycle k > 0 at the first integer step `s` with
        `s - warmup_steps >= B_k`. Computed exactly in Python.

        Args:
            total_steps: Number of steps of the run (an integer >= 0).

        Returns:
            A list of Python ints.
        """
        total_steps = _number("total_steps", total_steps)
        if self.cycle_mult == 1 and isinstance(self.first_cycle_steps, int):
            return list(range(self.warmup_steps, math.ceil(total_steps), self.first_cycle_steps))
        steps = []
        k = 0
        while True:
            first = self.warmup_steps + self._first_position(k)
            if first >= total_steps:
                return steps
            steps.append(first)
            k += 1

    def _first_position(self, k):
        """Smallest integer n >= 0 with n >= B_k."""
        n = max(0, math.ceil(self._start_float(k)))
        while n > 0 and self._reached(n - 1, k):
            n -= 1
        while not self._reached(n, k):
            n += 1
        return n
