"""SWALR: a schedule that switches to a constant SWA learning rate at a given step."""

from __future__ import annotations

import keras
import tensorflow as tf

from schedules.one_cycle import _float64_step, _integer
from schedules.sgdr import _fail, _number

_Schedule = keras.optimizers.schedules.LearningRateSchedule


def _deserialized(schedule):
    if isinstance(schedule, (dict, str)):
        return keras.saving.deserialize_keras_object(schedule)
    return schedule  # a schedule object (a config built in memory) or a number


@keras.saving.register_keras_serializable(package="lrtech")
class SWALR(_Schedule):
    """`schedule` up to `start_step`, then the constant `swa_lr` (stochastic weight averaging).

    Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization" (UAI
    2018) train with the usual schedule until the averaging starts and with a constant rate
    while the weights are averaged. For step `s`:

        lr(s) = schedule(s)   for s < start_step
        lr(s) = swa_lr        for s >= start_step

    This is `torch.optim.swa_utils.SWALR` with `anneal_epochs=0` (an immediate switch), except
    that it is the *base* rate: an optimizer with per-segment multipliers
    (`trainer.lr.optimizers.segmented`) keeps them, so segment i trains at `lr_mults[i] * swa_lr`.
    `momentum(step)` (for momentum cycling) follows the inner schedule up to `start_step` and
    then holds its value at `start_step`. Steps may be Python numbers or tensors of any shape;
    the comparison is made in float64, the result is float32.

    Example:

        schedule = SWALR(Cosine(0.1, total_steps=1000), start_step=750, swa_lr=0.01)
        float(schedule(749))   # the cosine's rate, 0.0146...
        float(schedule(750))   # 0.01, from here on

    Args:
        schedule: The rate before the switch: a `LearningRateSchedule` or a number > 0.
        start_step: The first step at the SWA rate (an integer >= 0).
        swa_lr: The constant rate from `start_step` on (finite, > 0).
        name: Name scope of the ops.

    Raises:
        ValueError: An argument is not a number / schedule, or is out of range.
    """

    def __init__(self, schedule, start_step, swa_lr, name="SWALR"):
        super().__init__()
        if not isinstance(schedule, _Schedule):
            schedule = _number("schedule", schedule)
            if schedule <= 0:
                _fail("schedule", schedule, "a LearningRateSchedule or a number > 0")
            schedule = float(schedule)
        self.schedule = schedule
        self.start_step = _integer("start_step", start_step, 0)
        swa_lr = _number("swa_lr", swa_lr)
        if swa_lr <= 0:
            _fail("swa_lr", swa_lr, "> 0")
        self.swa_lr = float(swa_lr)
        if name is not None and not isinstance(name, str):
            _fail("name", name, "a string")
        self.name = name

    @property
    def peak_lr(self):
        """The larger of the inner schedule's peak (a constant's value) and `swa_lr`."""
        inner = self.schedule
        if not isinstance(inner, _Schedule):
            return max(inner, self.swa_lr)
        for attr in ("peak_lr", "max_lr"):
            value = getattr(inner, attr, None)
            if isinstance(value, (int, float)):
                return max(float(value), self.swa_lr)
        raise AttributeError(f"SWALR.peak_lr: {type(inner).__name__} has no peak_lr")

    @property
    def momentum(self):
        """`momentum(step)`, when the inner schedule has one (AttributeError otherwise)."""
        if not callable(getattr(self.schedule, "momentum", None)):
            raise AttributeError(
                f"SWALR.momentum: {type(self.schedule).__name__} has no momentum(step)"
            )
        return self._momentum

    def get_config(self):
        """Returns the constructor arguments, the inner schedule Keras-serialized."""
        inner = self.schedule
        if isinstance(inner, _Schedule):
            inner = keras.saving.serialize_keras_object(inner)
        return {
            "schedule": inner,
            "start_step": self.start_step,
            "swa_lr": self.swa_lr,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuilds the schedule from `get_config()`, deserializing the inner schedule."""
        config = dict(config)
        config["schedule"] = _deserialized(config["schedule"])
        return cls(**config)

    def _inner(self, s):
        if isinstance(self.schedule, _Schedule):
            return tf.cast(self.schedule(s), tf.float32)
        return tf.fill(tf.shape(s), tf.constant(self.schedule, tf.float32))

    def __call__(self, step):
        """Learning rate at `step` (any shape; int or float tensor, Variable or Python number).

        Returns:
            A float32 tensor of the same shape as `step`.
        """
        with tf.name_scope(self.name or "SWALR"):
            s = _float64_step(step)
            swa = tf.fill(tf.shape(s), tf.constant(self.swa_lr, tf.float32))
            return tf.where(s >= float(self.start_step), swa, self._inner(s))

    def _momentum(self, step):
        with tf.name_scope((self.name or "SWALR") + "_momentum"):
            s = _float64_step(step)
            held = tf.minimum(s, float(self.start_step))
            return tf.cast(self.schedule.momentum(held), tf.float32)
