"""Keras callbacks for `model.fit` users: the learning-rate range test.

    from trainer.lr_find.callbacks import LRFinder

    finder = LRFinder()
    model.fit(ds, epochs=100, callbacks=[finder])  # stops by itself after <= 100 batches
    finder.result.plot("lr_find.png")
    print(finder.result.format_line())  # suggested --max_lr=... (valley; ...)

`LRFinder` sweeps the learning rate of the compiled optimizer exponentially from `start`
towards `end` over at most `num_steps` batches (see `trainer.lr_find`), stops the fit when
the smoothed loss diverges, and then puts the model's variables, the optimizer's variables
and its learning rate back as they were. Give `fit` enough epochs to hold `num_steps`
batches. For the same model, data and optimizer it records the same curve as
`trainer.lr_find` in a custom loop.
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from trainer.loop import state
from trainer.lr import keras_private, optimizers
from trainer.lr_find.finder import RangeTest


class _AssignedRate(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate read from a variable that the callback assigns before each batch.

    Stands in for an optimizer's own schedule during the test: the compiled train function
    reads the variable, so a new value needs no retrace.
    """

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def __call__(self, step):
        del step
        return tf.convert_to_tensor(self.variable)

    def get_config(self):
        return {"value": float(self.variable.numpy())}


class LRFinder(keras.callbacks.Callback):
    """The learning-rate range test as a `model.fit` callback.

    On `on_train_begin` it saves every model variable (weights, BatchNorm statistics, seed
    generator states) and every optimizer variable (building the optimizer first if `fit`
    has not yet: the state it restores is then the freshly built one), then starts the sweep
    from a fresh optimizer state (slots at their initial values, `iterations` 0), as
    `lr_find` does with its fresh optimizer. Before batch i it sets the learning rate to
    `RangeTest.lr(i)`: by assignment for an optimizer made with a float learning rate, else
    through a stand-in schedule reading a variable (the train function is retraced once at
    the start and once at the end). On `on_train_end` it restores everything, the original
    learning rate or schedule included, and sets `result`.

    While it runs, `logs["loss"]` is each batch's own loss: the callback resets the model's
    metrics before each batch, because Keras 3 reports the running mean over the epoch
    (weighted by batch size), from which the batch's loss is not recovered exactly.

    If `fit` raises, `on_train_end` is not called: call `restore()` yourself.

    Args:
        start, end, num_steps, beta, diverge: As in `trainer.lr_find.finder.RangeTest`.

    Attributes:
        result: The `LRFinderResult` once `fit` returns (None before).
    """

    def __init__(self, start=1e-7, end=10.0, num_steps=100, beta=0.98, diverge=4.0):
        super().__init__()
        self._settings = dict(start=start, end=end, num_steps=num_steps, beta=beta)
        self._settings["diverge"] = diverge
        self._test = RangeTest(**self._settings)  # validates now, not at fit time
        self.result = None
        self._saved = None

    def on_train_begin(self, logs=None):
        model = self.model
        if getattr(model, "steps_per_execution", 1) != 1:
            raise ValueError(
                "LRFinder: compile the model with steps_per_execution=1 (got"
                f" {model.steps_per_execution}); the learning rate changes every batch"
            )
        if not model.built or not model.trainable_variables:
            raise ValueError("LRFinder: build the model before fit (it has no variables yet)")
        self._test = RangeTest(**self._settings)
        self.result = None
        self._step = 0
        optimizer = model.optimizer
        # A LossScaleOptimizer holds the learning rate in its inner optimizer.
        self._lr_owner = getattr(optimizer, "inner_optimizer", optimizer)
        with model.distribute_strategy.scope():
            if not optimizer.built:
                optimizer.build(model.trainable_variables)  # what fit's first step would do
            self._saved = state.VariableState(
                model.variables + optimizer.variables + self._lr_owner.variables
            )
            # The sweep starts from a fresh optimizer state, as lr_find's fresh optimizer does.
            optimizers.reset_slots(optimizer, keras_private.built_variables(self._lr_owner))
            self._lr_owner.iterations.assign(0)
            self._schedule = keras_private.learning_rate_object(self._lr_owner)
            if self._schedule is not None:
                self._rate = tf.Variable(self._test.lr(0), dtype=tf.float32, trainable=False)
                self._lr_owner.learning_rate = _AssignedRate(self._rate)
                model.make_train_function(force=True)

    def on_train_batch_begin(self, batch, logs=None):
        if self._test.stop_reason is not None:
            return
        lr = self._test.lr(self._step)
        if self._schedule is None:
            self._lr_owner.learning_rate = lr
        else:
            self._rate.assign(lr)
        self.model.reset_metrics()

    def on_train_batch_end(self, batch, logs=None):
        if self._test.stop_reason is not None:
            self.model.stop_training = True
            return
        if not logs or "loss" not in logs:
            raise ValueError("LRFinder: fit reported no 'loss'; compile the model with a loss")
        if not self._test.record(self._test.lr(self._step), logs["loss"]):
            self.model.stop_training = True
        self._step += 1

    def on_train_end(self, logs=None):
        self.restore()
        self.result = self._test.result()
        if self.result.stop_reason == "incomplete":
            warnings.warn(
                f"LRFinder: fit ended after {len(self.result.lrs)} of {self._test.num_steps}"
                " batches; pass more epochs (or steps_per_epoch) for a complete test",
                stacklevel=2,
            )

    def restore(self):
        """Puts back the model's and the optimizer's variables and the learning rate.

        Called by `on_train_end`; call it yourself if `fit` raised. Does nothing twice.
        """
        if self._saved is None:
            return
        with self.model.distribute_strategy.scope():
            self._saved.restore()
        self._saved = None
        if self._schedule is not None:
            self._lr_owner.learning_rate = self._schedule
            self.model.make_train_function(force=True)
