"""The trainer: owns the input iterator, the trainable set and the compiled loops.

    trainer = Trainer(strategy, model, optimizer, dataset_fn, split_at=...,
                      global_batch_size=128)
    logs = trainer.train(50)   # 50 steps in one compiled call; the only way to train

The global step is the optimizer's `iterations`: one checkpointed variable, advanced once per
step inside the compiled loop (also when float16 loss scaling skips the update). The data
position follows it: the iterator is (re)created from `dataset_fn(start_step)` whenever the
global step is not where the iterator stands (first call, after a restore, after an LR range
test put the state back). The trainable set (segments >= `first_trainable`) lives here only.
On several replicas every call ends with the BatchNorm moving statistics averaged over the
replicas (`trainer.loop.compiled.replica_statistics`), so checkpoints, exports and evaluation see
one
value.
"""

from __future__ import annotations

import time

import numpy as np
from absl import logging

from trainer.errors import NonFiniteError
from trainer.loop.compiled import EvalLoop, TrainLoop
from trainer.lr import optimizers, segments


class Trainer:
    """Trains a model with a segmented optimizer in one compiled loop per trainable set.

    Args:
        strategy: The strategy the model and optimizer were created under.
        model: The Keras model (outputs logits).
        optimizer: A built segmented optimizer with `aggregate_gradients=False`.
        dataset_fn: `start_step -> distributed dataset` yielding global batches from that
            step on (`trainer.data` pipelines are a pure function of (seed, step)).
        split_at: The segment split points (freezing works by segment).
        global_batch_size: Examples per step summed over replicas.
        learning_rates: Optional `step -> [lr per segment]`, for error messages.
        clipnorm, loss_scale, jit_compile: See `trainer.loop.compiled.TrainLoop`.
        train_bn: Frozen segments keep their BatchNormalization training
            (`trainer.lr.segments.freeze`).
    """

    def __init__(
        self,
        strategy,
        model,
        optimizer,
        dataset_fn,
        *,
        split_at,
        global_batch_size: int,
        learning_rates=None,
        clipnorm=None,
        loss_scale=None,
        jit_compile=False,
        train_bn=False,
    ):
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.split_at = tuple(split_at)
        self.train_bn = bool(train_bn)
        self.global_batch_size = int(global_batch_size)
        self._dataset_fn = dataset_fn
        self._learning_rates = learning_rates
        self._loop = TrainLoop(
            strategy,
            model,
            optimizer,
            global_batch_size,
            clipnorm=clipnorm,
            loss_scale=loss_scale,
            jit_compile=jit_compile,
        )
        self._iterator = None
        self._iterator_step = None
        self.first_trainable = None
        self.trainable_variables = list(model.trainable_variables)

    @property
    def global_step(self):
        """The global step variable (the optimizer's `iterations`)."""
        return self.optimizer.iterations

    @property
    def step(self) -> int:
        """The global step: steps trained so far, over all runs resumed from checkpoints."""
        return int(self.optimizer.iterations.numpy())

    @property
    def traces(self) -> int:
        """How often a compiled loop was traced (one per trainable set is expected)."""
        return self._loop.traces

    def set_first_trainable(self, segment: int, *, reset_new: bool = True) -> list:
        """Trains segments >= `segment` from now on; freezes the others.

        Args:
            segment: The first segment that trains.
            reset_new: Restart the optimizer state of variables that were frozen and now
                train (gradual unfreezing); False when restoring a run's state.

        Returns:
            The variables that started to train.
        """
        if segment == self.first_trainable:
            return []
        before = {id(v) for v in self.trainable_variables}
        self.trainable_variables = segments.freeze(
            self.model, self.split_at, segment, train_bn=self.train_bn
        )
        newly = [v for v in self.trainable_variables if id(v) not in before]
        if reset_new and self.first_trainable is not None and newly:
            optimizers.reset_slots(self.optimizer, newly)
        self.first_trainable = segment
        return newly

    def _iterator_at(self, step: int):
        if self._iterator is None or self._iterator_step != step:
            self._iterator = iter(self._dataset_fn(step))
        return self._iterator

    def train(self, num_steps: int) -> dict:
        """Runs `num_steps` training steps in one compiled call.

        Returns:
            Logs: `loss` (per-step global-batch means), `correct` (per-step counts),
            `applied` (False where loss scaling skipped the update), `start` and `end`
            (global steps) and `seconds` (wall time of the call).

        Raises:
            NonFiniteError: A loss was NaN/inf; `error.step` is its global step.
        """
        if self.first_trainable is None:
            self.set_first_trainable(0, reset_new=False)
        start = self.step
        iterator = self._iterator_at(start)
        t0 = time.perf_counter()
        out = self._loop.run(
            iterator, int(num_steps), self.trainable_variables, key=self.first_trainable
        )
        seconds = time.perf_counter() - t0
        end = self.step
        self._iterator_step = end
        self._check_finite(start, out["loss"])
        logging.vlog(1, "trained steps %d-%d in %.3f s", start, end, seconds)
        return dict(out, start=start, end=end, seconds=seconds)

    def _check_finite(self, start: int, losses: np.ndarray) -> None:
        bad = np.flatnonzero(~np.isfinite(losses))
        if not bad.size:
            return
        at = start + int(bad[0])
        message = f"non-finite loss {losses[bad[0]]} at step {at}"
        if self._learning_rates is not None:
            lrs = ", ".join(
                f"segment {s}: {lr:.4g}" for s, lr in enumerate(self._learning_rates(at))
            )
            message += f" (learning rates: {lrs})"
        error = NonFiniteError(message)
        error.step = at
        raise error


class Evaluator:
    """Evaluates the model on a finite eval split: loss, accuracy (and top-5).

    Args:
        strategy: The strategy the model was created under.
        model: The Keras model (outputs logits).
        dataset_fn: `() -> distributed dataset` over the eval split, once, in order.
        num_classes: Classes of the task (top-5 is reported above 5).
    """

    def __init__(self, strategy, model, dataset_fn, num_classes: int):
        self._loop = EvalLoop(strategy, model, num_classes)
        self._dataset_fn = dataset_fn
        self._dataset = None

    def evaluate(self) -> dict[str, float]:
        """One pass over the eval split; `loss`, `accuracy`, `examples` (and `top5`)."""
        if self._dataset is None:
            self._dataset = self._dataset_fn()
        return self._loop.run(self._dataset)
