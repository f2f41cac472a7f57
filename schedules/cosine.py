"""Cosine: linear warmup, then a single cosine decay to a floor that is held (no restarts)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from schedules.one_cycle import _float64_step, _integer
from schedules.sgdr import _fail, _number


@keras.saving.register_keras_serializable(package="lrtech")
class Cosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from `min_lr` to `max_lr`, one cosine down to `min_lr`, then held.

    The cosine annealing of Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", ICLR 2017, without restarts, after the linear warmup of Goyal et al.,
    "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017. For step `s` (an
    optimizer step, i.e. one batch), with `w = warmup_steps` and `T = total_steps`:

    * `s < w`: `lr = min_lr + (max_lr - min_lr) * s / w`;
    * `w <= s < T`: `lr = min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * (s - w) / (T - w)))`;
    * `s >= T`: `lr = min_lr`, held.

    For every step `s < total_steps` this equals, bit for bit, `SGDR(max_lr,
    first_cycle_steps=total_steps - warmup_steps, min_lr=min_lr, warmup_steps=warmup_steps)`,
    which would restart at `total_steps` where `Cosine` stays at `min_lr`. Steps may be floats
    or tensors of any shape; the arithmetic is float64 and the result float32.

    Example:

        schedule = Cosine(max_lr=0.1, total_steps=1000, warmup_steps=100)
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
        float(schedule(50))    # 0.05, half way up the warmup
        float(schedule(100))   # 0.1, the peak
        float(schedule(550))   # 0.05, half way down
        float(schedule(5000))  # 0.0, min_lr, held

    Args:
        max_lr: Learning rate at the end of warmup (finite, > 0).
        total_steps: Step at which `min_lr` is reached (an integer > warmup_steps).
        warmup_steps: Steps of linear warmup from `min_lr` (an integer >= 0).
        min_lr: Floor of the schedule (0 <= min_lr <= max_lr).
        name: Name scope of the ops.

    Raises:
        ValueError: An argument is not a finite number or is out of range.
    """

    def __init__(self, max_lr, total_steps, warmup_steps=0, min_lr=0.0, name="Cosine"):
        super().__init__()
        max_lr = _number("max_lr", max_lr)
        total_steps = _integer("total_steps", total_steps, 1)
        warmup_steps = _integer("warmup_steps", warmup_steps, 0)
        min_lr = _number("min_lr", min_lr)
        if max_lr <= 0:
            _fail("max_lr", max_lr, "> 0")
        if warmup_steps >= total_steps:
            _fail("warmup_steps", warmup_steps, f"< total_steps ({total_steps})")
        if min_lr < 0:
            _fail("min_lr", min_lr, ">= 0")
        if min_lr > max_lr:
            _fail("min_lr", min_lr, f"<= max_lr ({max_lr})")
        if name is not None and not isinstance(name, str):
            _fail("name", name, "a string")
        self.max_lr = max_lr
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_lr = min_lr
        self.name = name

    @property
    def peak_lr(self):
        """The highest learning rate of the schedule, `max_lr`."""
        return self.max_lr

    def get_config(self):
        """Returns every constructor argument, so `Cosine(**config)` rebuilds the schedule."""
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_lr": self.min_lr,
            "name": self.name,
        }

    def __call__(self, step):
        """Learning rate at `step`: a float32 tensor of `step`'s shape (as `SGDR.__call__`)."""
        with tf.name_scope(self.name or "Cosine"):
            s = _float64_step(step)
            warmup = float(self.warmup_steps)
            # The same operations, in the same order, as SGDR's first cycle: equal bits.
            t = tf.maximum(s - warmup, 0.0) / float(self.total_steps - self.warmup_steps)
            lr = self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1.0 + tf.cos(math.pi * t))
            if self.warmup_steps > 0:  # a Python constant: no control flow on tensors
                ramp = self.min_lr + (self.max_lr - self.min_lr) * (s / warmup)
                lr = tf.where(s < warmup, ramp, lr)
            lr = tf.where(s >= float(self.total_steps), tf.constant(self.min_lr, tf.float64), lr)
            return tf.cast(lr, tf.float32)
