"""Phases: schedules run one after another, each on its own step counter."""

from __future__ import annotations

import keras
import tensorflow as tf

from schedules.one_cycle import _float64_step, _integer
from schedules.sgdr import _fail


def _checked_phases(phases):
    """`phases` as a list of (int num_steps, LearningRateSchedule) pairs, or ValueError."""
    if isinstance(phases, (str, bytes)) or not isinstance(phases, (list, tuple)) or not phases:
        _fail("phases", phases, "a non-empty list of (num_steps, schedule) pairs")
    checked = []
    for j, pair in enumerate(phases):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
            _fail(f"phases[{j}]", pair, "a (num_steps, schedule) pair")
        num_steps = _integer(f"phases[{j}][0]", pair[0], 1)
        schedule = pair[1]
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            _fail(f"phases[{j}][1]", schedule, "a keras.optimizers.schedules.LearningRateSchedule")
        checked.append((num_steps, schedule))
    return checked


def _deserialized(schedule):
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return schedule  # a config built in memory rather than read back
    return keras.saving.deserialize_keras_object(schedule)


@keras.saving.register_keras_serializable(package="lrtech")
class Phases(keras.optimizers.schedules.LearningRateSchedule):
    """Consecutive schedules: phase j runs `num_steps_j` steps on its own counter from 0.

    With `start_0 = 0` and `start_j = num_steps_0 + ... + num_steps_{j-1}`, step `s` in
    `[start_j, start_{j+1})` gets `schedule_j(s - start_j)`; the last phase continues past
    its end (`s >= start_last` always uses the last schedule). Evaluation is graph-safe:
    every phase is evaluated on the whole step tensor (at `max(s - start_j, 0)`, so no inner
    schedule sees a negative step) and the right one is selected, elementwise; the result is
    float32. `momentum(step)` is assembled the same way from the phases' `momentum` methods.

    This is fastai's `fine_tune` (Howard & Gugger, "fastai: A Layered API for Deep
    Learning", 2020): one cycle with the body frozen, then one with it unfrozen at half the
    rate, each a 1cycle (Smith 2018, arXiv:1803.09820) of its own.

    Example:

        base_lr, frozen_steps, steps = 2e-3, 100, 1000
        schedule = Phases([
            (frozen_steps, OneCycle(base_lr, frozen_steps, pct_start=0.99)),
            (steps, OneCycle(base_lr / 2, steps, pct_start=0.3, div=5.0)),
        ])
        schedule.boundaries  # [100]
        float(schedule(100))  # 0.0002, the second cycle's first step: (base_lr / 2) / 5
        float(schedule.momentum(100))  # 0.95, moms[0] of the second cycle

    Args:
        phases: A non-empty list of `(num_steps, schedule)` pairs, `num_steps` an integer
            >= 1 and `schedule` a `keras.optimizers.schedules.LearningRateSchedule`.
        name: Name scope of the ops.

    Raises:
        ValueError: `phases` is not such a list.
    """

    def __init__(self, phases, name="Phases"):
        super().__init__()
        self.phases = _checked_phases(phases)
        if name is not None and not isinstance(name, str):
            _fail("name", name, "a string")
        self.name = name

    @property
    def boundaries(self):
        """The step at which each phase after the first starts (Python ints, increasing)."""
        starts, start = [], 0
        for num_steps, _ in self.phases[:-1]:
            start += num_steps
            starts.append(start)
        return starts

    @property
    def total_steps(self):
        """The sum of the phases' `num_steps` (the last phase still continues past it)."""
        return sum(num_steps for num_steps, _ in self.phases)

    @property
    def peak_lr(self):
        """The largest `peak_lr` of the phases; AttributeError when a phase has none."""
        peaks = []
        for j, (_, schedule) in enumerate(self.phases):
            if not hasattr(schedule, "peak_lr"):
                raise AttributeError(
                    f"Phases.peak_lr: phase {j} ({type(schedule).__name__}) has no peak_lr"
                )
            peaks.append(schedule.peak_lr)
        return max(peaks)

    @property
    def momentum(self):
        """`momentum(step)`: the phases' momentum, as a float32 tensor shaped like `step`.

        An attribute only when every phase's schedule has a `momentum` method (e.g.
        `OneCycle`), so `getattr(schedule, "momentum", None)` tells whether it can drive
        momentum cycling; otherwise reading it raises AttributeError naming the phase.
        """
        for j, (_, schedule) in enumerate(self.phases):
            if not callable(getattr(schedule, "momentum", None)):
                raise AttributeError(
                    f"Phases.momentum: phase {j} ({type(schedule).__name__}) has no momentum(step)"
                )
        return self._momentum

    def get_config(self):
        """Returns the constructor arguments, the phases' schedules Keras-serialized."""
        return {
            "phases": [
                [num_steps, keras.saving.serialize_keras_object(schedule)]
                for num_steps, schedule in self.phases
            ],
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuilds the schedule from `get_config()`, deserializing the phases' schedules."""
        config = dict(config)
        config["phases"] = [
            (num_steps, _deserialized(schedule)) for num_steps, schedule in config["phases"]
        ]
        return cls(**config)

    def __call__(self, step):
        """Learning rate at `step` (any shape; int or float tensor, Variable or Python number).

        Returns:
            A float32 tensor of the same shape as `step`.
        """
        with tf.name_scope(self.name or "Phases"):
            return self._select(step, [schedule for _, schedule in self.phases])

    def _momentum(self, step):
        with tf.name_scope((self.name or "Phases") + "_momentum"):
            return self._select(step, [schedule.momentum for _, schedule in self.phases])

    def _select(self, step, functions):
        s = _float64_step(step)
        value = tf.cast(functions[0](s), tf.float32)
        for start, fn in zip(self.boundaries, functions[1:]):
            start = float(start)
            later = tf.cast(fn(tf.maximum(s - start, 0.0)), tf.float32)
            value = tf.where(s >= start, later, value)
        return value
