"""One training run: build under the strategy's scope, restore, train, export.

    strategy = trainer.strategy.make_strategy(config.strategy)
    experiment = Experiment(config, strategy)
    experiment.build()
    experiment.restore()          # resumes from model_dir/ckpt by itself
    metrics = experiment.train()  # Preempted on SIGTERM/SIGINT, NonFiniteError on NaN/inf
    experiment.export()

The driver is plain Python around one compiled loop (`trainer.loop.TrainLoop`): it runs up to
`steps_per_loop` steps per call and ends a loop early at every checkpoint, eval, epoch, SGDR
restart and unfreeze boundary (`trainer.steps.Plan.next_boundary`). A signal therefore takes
effect after at most `steps_per_loop` steps.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from trainer import checkpoints, data, optimizers, precision, segments, steps
from trainer import strategy as strategy_lib
from trainer.errors import NonFiniteError, Preempted, UserError
from trainer.loop import EvalLoop, TrainLoop
from trainer.run_state import RunState


def _resolve_split_at(config) -> tuple:
    out = []
    for entry in config.split_at:
        entry = str(entry).strip()
        if entry == "preset" or entry.startswith("preset:"):
            import models  # the model zoo is only needed for presets and `build`

            name = entry.partition(":")[2] or "default"
            out.extend(models.split_preset(config.model, name))
        else:
            out.append(entry)
    return tuple(out)


def _resolve_lr_mults(config, num_segments: int) -> tuple[float, ...]:
    if config.lr_mults is not None:
        if len(config.lr_mults) != num_segments:
            raise UserError(
                f"--lr_mults has {len(config.lr_mults)} values but --split_at gives "
                f"{num_segments} segments"
            )
        return tuple(float(m) for m in config.lr_mults)
    if config.lr_spread is not None:
        return optimizers.mults_from_spread(num_segments, config.lr_spread)
    return (1.0,) * num_segments


class Experiment:
    """A training run described by a `trainer.config.Config`.

    Args:
        config: The run configuration (`num_classes=None` is inferred from the data).
        strategy: From `trainer.strategy.make_strategy`.
        model_fn: Optional `num_classes -> keras.Model` replacing `models.build` (tests use
            tiny models); called inside the strategy scope.
    """

    def __init__(self, config, strategy, *, model_fn=None):
        self.config = config
        self.strategy = strategy
        self.model_fn = model_fn
        self.is_chief = strategy_lib.is_chief(strategy)
        self.step = 0
        self._signal = None
        self.built = False

    # Build ---------------------------------------------------------------------------------

    def build(self) -> Experiment:
        """Reads the dataset info and builds model, optimizer, counters, checkpoint under scope."""
        config = self.config
        self.info = data.info_from_config(config)
        if config.num_classes is None:
            config = self.config = config.replace(num_classes=self.info.num_classes)
        self.plan = steps.resolve(config, data.steps_per_epoch(self.info, config.global_batch_size))
        self.schedule = self._make_schedule()
        previous_policy = keras.config.dtype_policy()
        precision.set_policy(config.mixed_precision)
        keras.utils.set_random_seed(config.seed)  # identical initial weights on every worker
        try:
            with self.strategy.scope():
                self._build_in_scope()
        finally:
            keras.config.set_dtype_policy(previous_policy)
        self.train_loop = TrainLoop(
            self.strategy,
            self.model,
            self.optimizer,
            config.global_batch_size,
            clipnorm=config.clipnorm,
            loss_scale=self.loss_scale,
            jit_compile=config.jit_compile,
        )
        self.eval_loop = EvalLoop(self.strategy, self.model, config.num_classes)
        self.built = True
        return self

    def _make_schedule(self):
        config, plan = self.config, self.plan
        if config.schedule == "constant":
            return config.max_lr
        from schedules import SGDR

        return SGDR(
            config.max_lr,
            plan.first_cycle_steps,
            min_lr=config.min_lr,
            cycle_mult=config.cycle_mult,
            max_lr_decay=config.max_lr_decay,
            warmup_steps=config.warmup_steps,
        )

    def _build_model(self):
        config = self.config
        if self.model_fn is not None:
            return self.model_fn(config.num_classes)
        import models

        return models.build(
            config.model,
            config.num_classes,
            image_size=config.image_size,
            weights=config.weights,
            head=config.head,
        )

    def _build_in_scope(self):
        config = self.config
        self.model = self._build_model()
        self.split_at = _resolve_split_at(config)
        self.segment_of = segments.assign(self.model, self.split_at)
        self.num_segments = max(self.segment_of.values()) + 1
        self.lr_mults = _resolve_lr_mults(config, self.num_segments)
        base = optimizers.make(
            config.optimizer,
            self.schedule,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.optimizer = optimizers.segmented(
            base, self.segment_of, self.lr_mults, aggregate_gradients=False
        )
        # Every variable that can ever train, before the first trace (see DESIGN pitfalls).
        self.optimizer.build(self.model.trainable_variables)
        once = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=once)
        self.first_trainable_var = tf.Variable(
            config.freeze_segments, dtype=tf.int64, trainable=False, aggregation=once
        )
        self.loss_scale = None
        objects = dict(
            model=self.model,
            optimizer=self.optimizer,
            step=self.step_var,
            first_trainable_segment=self.first_trainable_var,
        )
        if precision.needs_loss_scale(config.mixed_precision):
            self.loss_scale = precision.DynamicLossScale()
            objects["loss_scale"] = self.loss_scale
        resolver = getattr(self.strategy, "cluster_resolver", None)
        self.checkpointer = checkpoints.Checkpointer(
            config.model_dir,
            config.keep_checkpoints,
            is_chief=self.is_chief,
            task_id=getattr(resolver, "task_id", 0) or 0,
            **objects,
        )

    # Reports -------------------------------------------------------------------------------

    def learning_rates(self, step: int) -> list[float]:
        """Each segment's learning rate at optimizer step `step`."""
        base = self.schedule
        lr = float(np.asarray(base(step))) if callable(base) else float(base)
        return [m * lr for m in self.lr_mults]

    def lr_table(self) -> str:
        """Segment, layers, parameters, multiplier and learning rate at step 0, one row each."""
        rows = segments.layer_rows(self.model, self.split_at)
        lrs = self.learning_rates(0)
        lines = ["segment  layers      params      lr_mult   lr at step 0"]
        for s in range(self.num_segments):
            mine = [r for r in rows if r.segment == s]
            params = sum(r.trainable_params for r in mine)
            lines.append(
                f"{s:>7}  {mine[0].index:>4}-{mine[-1].index:<5} {params:>10}  "
                f"{self.lr_mults[s]:>8.4g}  {lrs[s]:.4g}"
            )
        return "\n".join(lines)

    def layer_report(self) -> str:
        """The --list_layers table: every layer with its segment, then the per-segment lrs."""
        return segments.format_layer_table(
            self.model, self.split_at, lr_mults=self.lr_mults, base_lr=self.schedule
        )

    # Restore -------------------------------------------------------------------------------

    def restore(self) -> int:
        """Resumes from model_dir/ckpt when it holds a checkpoint; returns the global step.

        Raises:
            IncompatibleCheckpointError: The checkpoint was made with a different
                configuration (checked before anything is loaded or written).
        """
        config = self.config
        if self.checkpointer.latest() is not None:
            checkpoints.check_compatible(config.model_dir, config)
        path = self.checkpointer.restore()
        self.step = int(self.step_var.numpy())
        if path:
            logging.info("Restored %s: resuming at step %d", path, self.step)
        elif self.is_chief:
            checkpoints.write_config(config.model_dir, config)
        if self.is_chief:
            with tf.io.gfile.GFile(os.path.join(config.model_dir, "flags.txt"), "w") as f:
                f.write(config.to_flagfile())
        logging.info("Learning rates per segment:\n%s", self.lr_table())
        return self.step

    # Train ---------------------------------------------------------------------------------

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            del frame
            self._signal = signum
            logging.warning(
                "Signal %d: stopping after the current loop (at most %d steps) with a checkpoint",
                signum,
                self.plan.steps_per_loop,
            )

        return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def _set_trainable(self, step: int, first_trainable: int | None):
        """Freezes the segments below the one that trains at `step`; resets new ones' slots."""
        wanted = self.plan.first_trainable_segment(step)
        if wanted == first_trainable:
            return first_trainable
        before = {id(v) for v in self.model.trainable_variables}
        self.trainable = segments.freeze(self.model, self.split_at, wanted)
        newly = [v for v in self.trainable if id(v) not in before]
        if first_trainable is not None and newly:
            optimizers.reset_slots(self.optimizer, newly)
            logging.info("Step %d: segment %d starts to train", step, wanted)
        self.first_trainable_var.assign(wanted)
        return wanted

    def _check_finite(self, start: int, losses: np.ndarray):
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            at = start + int(bad[0])
            iteration = int(self.optimizer.iterations.numpy()) - (len(losses) - int(bad[0]))
            lrs = ", ".join(
                f"segment {s}: {lr:.4g}" for s, lr in enumerate(self.learning_rates(iteration))
            )
            raise NonFiniteError(
                f"non-finite loss {losses[bad[0]]} at step {at} (learning rates: {lrs}); "
                f"the last good checkpoint is kept: {self.checkpointer.latest()}"
            )

    def evaluate(self) -> dict[str, float]:
        """Loss, accuracy (and top-5 with more than 5 classes) on the eval split."""
        if not hasattr(self, "_eval_data"):
            dataset = data.eval_dataset(self.config, self.info, self.config.global_batch_size)
            self._eval_data = strategy_lib.distribute_dataset(self.strategy, dataset)
        return self.eval_loop.run(self._eval_data)

    def train(self) -> dict:
        """Trains from the restored step to the end; returns the metrics (also metrics.json).

        Raises:
            Preempted: SIGTERM/SIGINT arrived; a checkpoint was saved first.
            NonFiniteError: The loss became NaN/inf; nothing after the last good checkpoint
                is saved.
        """
        if not self.built:
            raise UserError("Experiment.train: call build() (and restore()) first")
        steps.check_length(self.config)
        state = RunState(self)
        previous = self._install_signal_handlers()
        try:
            while self.step < self.plan.total_steps:
                self._one_loop(state)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            state.summaries.close()
            state.progress.close()
        return state.finish()

    def _one_loop(self, state):
        plan, start = self.plan, self.step
        end = plan.next_boundary(start, state.restarts)
        state.first = self._set_trainable(start, state.first)
        t0 = time.perf_counter()
        out = self.train_loop.run(state.iterator, end - start, self.trainable, key=state.first)
        seconds = time.perf_counter() - t0
        self._check_finite(start, out["loss"])
        self.step = end
        self.step_var.assign(end)
        state.record(start, end, out, seconds)
        if self.config.snapshot_at_restarts and end in state.restarts and self.is_chief:
            checkpoints.save_snapshot(
                self.config.model_dir, self.model, self.schedule.cycle_at(end - 1), end
            )
        if end % plan.eval_every_steps == 0 or end == plan.total_steps:
            state.evaluated(end, self.evaluate())
        if end % plan.checkpoint_every_steps == 0 or end == plan.total_steps or self._signal:
            self.checkpointer.save(end, self.model)
        if self._signal:
            raise Preempted(
                f"signal {self._signal}: saved a checkpoint at step {end} in "
                f"{self.checkpointer.directory}; run the same command to resume"
            )

    # Export --------------------------------------------------------------------------------

    def export(self) -> str:
        """Writes export/model.keras (no optimizer), model.weights.h5 and saved_model/."""
        directory = os.path.join(self.config.model_dir, "export")
        if not self.is_chief:
            return directory
        checkpoints.check_finite_weights(self.model, self.step)
        tf.io.gfile.makedirs(directory)
        self.model.trainable = True  # the exported model is not frozen
        # The model is never compiled, so model.keras carries no (segmented) optimizer.
        self.model.save(os.path.join(directory, "model.keras"))
        self.model.save_weights(os.path.join(directory, "model.weights.h5"))
        self.model.export(os.path.join(directory, "saved_model"), verbose=False)
        logging.info("Exported the model to %s", directory)
        return directory
