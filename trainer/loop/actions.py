"""The controller's actions: the periodic work of a run, each due by its own `When`.

Order matters where one action uses another's result: the run's list is
`Unfreeze, Report, Snapshot, [AverageWeights, EvaluateEnsemble,] Evaluate, Checkpoint,
Preemption` (`trainer.experiment`); the weight-averaging actions are
`trainer.averaging.weight_averaging`'s (after Snapshot, whose files the ensemble reads; before
Checkpoint, which saves the SWA average).
"""

from __future__ import annotations

import numpy as np
from absl import logging

from trainer.errors import Preempted
from trainer.loop.controller import Action, When
from trainer.reporting import summaries
from trainer.run_dir import checkpoints


class Unfreeze(Action):
    """Gradual unfreezing: one more segment trains at each of the plan's unfreeze steps.

    `start` sets the trainable set the restored step calls for (no optimizer state reset:
    the checkpoint restored it); at an unfreeze step the newly trained variables' optimizer
    state restarts.
    """

    def __init__(self, trainer, plan):
        self.trainer = trainer
        self.plan = plan
        self.when = When(steps=tuple(plan.unfreeze_steps()))

    def start(self, step):
        self.trainer.set_first_trainable(self.plan.first_trainable_segment(step), reset_new=False)

    def __call__(self, step, logs):
        segment = self.plan.first_trainable_segment(step)
        if self.trainer.set_first_trainable(segment):
            logging.info("Step %d: segment %d starts to train", step, segment)


class Report(Action):
    """After every loop: train scalars to TensorBoard and the progress bar (None: no bar).

    Loss, accuracy, images/s and step time are the loop's, at the loop's last step. The
    learning rates (`lr/segment_k`) and a cycled momentum have one point per step trained:
    the point at step s is the schedule at s, the rate of the update that took the global
    step from s to s + 1, so TensorBoard draws the schedule itself. They are computed here,
    after the loop, since the schedule is a pure function of the step. The bar shows the
    rate of the loop's last step trained (step - 1), also at a cycle end.

    Due at every epoch end too, so the bar closes each epoch with the epoch's numbers, and at
    every SGDR restart (or recipe phase boundary).
    """

    def __init__(
        self,
        writer,
        progress,
        learning_rates,
        global_batch_size,
        steps_per_epoch,
        restarts=(),
        momentum=None,
        adaptive=None,
    ):
        self.writer = writer
        self.progress = progress
        self.learning_rates = learning_rates
        self.momentum = momentum  # step -> cycled momentum / beta_1, or None
        self.adaptive = adaptive  # () -> Auto-RGN's mean multiplier per segment, or None
        self.global_batch_size = global_batch_size
        self.when = When(every=steps_per_epoch, steps=tuple(restarts), each_loop=True)
        self.steps_per_epoch = steps_per_epoch
        self.train_seconds = 0.0
        self.steps = 0
        self.last = {}
        self._epoch = None  # [epoch, steps, loss sum, correct sum] of the bar's running means

    def start(self, step):
        if self.progress is not None:
            self.progress.start(step)

    def max_loop_steps(self):
        # On a terminal, loops short enough for the bar to move every couple of seconds.
        return self.progress.max_loop_steps() if self.progress is not None else None

    def __call__(self, step, logs):
        n = logs["end"] - logs["start"]
        seconds = logs["seconds"]
        self.train_seconds += seconds
        self.steps += n
        images_per_sec = n * self.global_batch_size / max(seconds, 1e-9)
        self.last = {
            "loss": float(np.mean(logs["loss"])),
            "accuracy": float(np.sum(logs["correct"]) / (n * self.global_batch_size)),
        }
        scalars = dict(self.last, images_per_sec=images_per_sec, step_time=seconds / n)
        if self.adaptive is not None:  # the last step's, per segment (trainer.lr.rgn)
            scalars.update({f"adaptive_lr/segment_{k}": m for k, m in enumerate(self.adaptive())})
        skipped = int(np.sum(~logs["applied"]))
        if skipped:
            scalars["skipped_steps"] = skipped
        # One point per step trained: rates[i] is the schedule at trained[i] (see above).
        trained = range(logs["start"], logs["end"])
        rates = np.asarray(self.learning_rates(np.asarray(trained)))
        series = {f"lr/segment_{k}": (trained, rates[:, k]) for k in range(rates.shape[1])}
        if self.momentum is not None:
            series["momentum"] = (trained, np.asarray(self.momentum(np.asarray(trained))))
        self.writer.write(summaries.TRAIN, step, scalars, series)
        if self.progress is not None:
            self.progress.update(
                step,
                {**self._epoch_means(step, n, logs), "lr": rates[-1][-1], "img/s": images_per_sec},
            )

    def _epoch_means(self, step, n, logs) -> dict:
        # The bar shows the epoch's running means (fastai's table does too), not the last loop's.
        epoch = (step - 1) // self.steps_per_epoch
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = [epoch, 0, 0.0, 0.0]
        self._epoch[1] += n
        self._epoch[2] += float(np.sum(logs["loss"]))
        self._epoch[3] += float(np.sum(logs["correct"]))
        steps = self._epoch[1]
        return {
            "loss": self._epoch[2] / steps,
            "accuracy": self._epoch[3] / (steps * self.global_batch_size),
        }

    @property
    def images_per_sec(self) -> float | None:
        if not self.train_seconds:
            return None
        return self.steps * self.global_batch_size / self.train_seconds

    def close(self):
        if self.progress is not None:
            self.progress.close()


class Evaluate(Action):
    """Evaluates every `every` steps and at the end; records into the run's `History`.

    `evaluate_fn(step)` returns the record (`trainer.reporting.eval_metrics.record`).
    """

    def __init__(self, evaluate_fn, history, writer, steps_per_epoch, every):
        self.evaluate_fn = evaluate_fn
        self.history = history
        self.writer = writer
        self.steps_per_epoch = steps_per_epoch
        self.when = When(every=every, at_end=True)

    def __call__(self, step, logs=None):
        results = self.evaluate_fn(step)
        epoch = step / self.steps_per_epoch
        summaries.log_eval(step, epoch, results)
        self.writer.write("eval", step, {k: v for k, v in results.items() if k != "examples"})
        self.history.record(step, results)
        return results


class Snapshot(Action):
    """Saves the weights at each SGDR cycle end as snapshots/cycle_K.weights.h5 (chief).

    `cycle_ends` are the restart steps plus the run's last step when it ends a cycle
    (`trainer.averaging.weight_averaging.cycle_ends`).
    """

    def __init__(self, model_dir, model, schedule, cycle_ends):
        self.model_dir = model_dir
        self.model = model
        self.schedule = schedule
        self.when = When(steps=tuple(cycle_ends))

    def __call__(self, step, logs):
        checkpoints.save_snapshot(
            self.model_dir, self.model, self.schedule.cycle_at(step - 1), step
        )


class Checkpoint(Action):
    """Saves a checkpoint every `every` steps and at the end (every worker calls it)."""

    def __init__(self, checkpointer, model, every):
        self.checkpointer = checkpointer
        self.model = model
        self.when = When(every=every, at_end=True)
        self.saved_at = None

    def __call__(self, step, logs=None):
        if self.saved_at != step:
            self.checkpointer.save(step, self.model)
            self.saved_at = step


class Preemption(Action):
    """After every loop: on SIGTERM/SIGINT, save a checkpoint and stop with `Preempted`.

    Under multi_worker every worker must take part in the save, so a signal to one worker
    must reach all of them (cluster managers send it to every task).
    """

    when = When(each_loop=True)

    def __init__(self, interrupts, checkpoint: Checkpoint):
        self.interrupts = interrupts
        self.checkpoint = checkpoint

    def __call__(self, step, logs):
        signum = self.interrupts.pending
        if signum is None:
            return
        self.checkpoint(step)
        raise Preempted(
            f"signal {signum}: saved a checkpoint at step {step} in "
            f"{self.checkpoint.checkpointer.directory}; run the same command to resume"
        )
