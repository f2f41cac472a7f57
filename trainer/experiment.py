"""One training run: build under the strategy's scope, restore, train, export.

    strategy = trainer.loop.strategy.make_strategy(config.strategy)
    experiment = Experiment(config, strategy)
    experiment.build()
    experiment.restore()          # resumes from the newest readable checkpoint by itself
    metrics = experiment.train()  # Preempted on SIGTERM/SIGINT, NonFiniteError on NaN/inf
    experiment.export()           # atomic: export/ is complete or absent

`Experiment` assembles the parts and reads like a table of contents; the work is theirs:
`trainer.loop.runner.Trainer` owns the iterator, the trainable set and the compiled loop
(`train(num_steps)`); `trainer.loop.controller.Controller` runs it from boundary to boundary
and the `trainer.loop.actions` due at each (unfreeze, report, snapshot, evaluate, checkpoint,
preemption); `trainer.averaging.weight_averaging` adds the snapshot ensemble, SWA and EMA
(actions, and the averaged models evaluated and exported after training);
`trainer.run_dir.checkpoints.Checkpointer` saves and restores; the global step is the
optimizer's `iterations`, the one step counter of the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import keras
from absl import logging

from trainer import data
from trainer.averaging import weight_averaging
from trainer.config import CYCLE_MOMENTUM_OPTIMIZERS
from trainer.errors import NonFiniteError, Preempted, UserError
from trainer.loop import actions, precision, steps
from trainer.loop import strategy as strategy_lib
from trainer.loop.controller import Controller
from trainer.loop.interrupts import Interrupts
from trainer.loop.runner import Evaluator, Trainer
from trainer.lr import optimizers
from trainer.lr.table import SegmentTable
from trainer.lr_find import range_test
from trainer.reporting import summaries
from trainer.reporting.progress import ProgressBar
from trainer.run_dir import checkpoints, faults
from trainer.run_dir import files as run_dir

EXPORT_DIR = "export"
EXPORT_FILES = (
    "model.keras",
    "model.weights.h5",
    os.path.join("saved_model", "saved_model.pb"),
    "labels.json",
)


def one_cycle_args(config, *, pct_start=0.25, div=25.0) -> dict:
    """OneCycle's arguments from the flags; unset --pct_start / --div take these defaults."""
    return dict(
        pct_start=pct_start if config.pct_start is None else config.pct_start,
        div=div if config.div is None else config.div,
        div_final=config.div_final,
        moms=tuple(config.moms),
    )


def fine_tune_schedule(config, plan):
    """fastai's fine_tune as two one-cycle phases of one schedule (one global step).

    Phase 1 (the head alone, `plan.freeze_steps`): one cycle at max_lr with pct_start 0.99.
    Phase 2 (everything): one cycle at max_lr / 2 with pct_start 0.3 and div 5, fastai's
    `fine_tune` defaults (--pct_start and --div override these two).
    """
    import schedules

    first = plan.freeze_steps
    rest = plan.total_steps - first
    head = schedules.OneCycle(
        config.max_lr, first, **dict(one_cycle_args(config), pct_start=0.99, div=25.0)
    )
    full = schedules.OneCycle(
        config.max_lr / 2, max(rest, 1), **one_cycle_args(config, pct_start=0.3, div=5.0)
    )
    return schedules.Phases([(first, head), (max(rest, 1), full)])


class Experiment:
    """A training run described by a `trainer.config.Config`.

    Args:
        config: The run configuration (`num_classes=None` is inferred from the data).
        strategy: From `trainer.loop.strategy.make_strategy`.
        model_fn: Optional `num_classes -> keras.Model` replacing `models.build` (tests use
            tiny models); called inside the strategy scope.
        interrupts: A `trainer.loop.interrupts.Interrupts` already installed by the caller
            (run_train.py installs one first thing); by default `train` and `export` install
            their own for their duration.
    """

    def __init__(self, config, strategy, *, model_fn=None, interrupts=None):
        self.config = config
        self.strategy = strategy
        self.model_fn = model_fn
        self.interrupts = interrupts
        self.is_chief = strategy_lib.is_chief(strategy)
        self.built = False
        self.history = None
        self.lr_find_result = None  # the LR range test's, once one ran

    # Build ---------------------------------------------------------------------------------

    def build(self) -> Experiment:
        """Loads the data and builds model, optimizer, trainer and checkpointer under scope."""
        config = self.config
        self.data = data.load(config)
        self.info = self.data.info
        if config.num_classes is None:
            config = self.config = config.replace(num_classes=self.info.num_classes)
        elif config.num_classes < self.info.num_classes:
            raise UserError(
                f"--num_classes={config.num_classes} is smaller than the {self.info.num_classes}"
                f" classes of --dataset={config.dataset} (labels 0..{self.info.num_classes - 1})"
            )
        self.plan = steps.resolve(config, data.steps_per_epoch(self.info, config.global_batch_size))
        previous_policy = keras.config.dtype_policy()
        precision.set_policy(config.mixed_precision)
        keras.utils.set_random_seed(config.seed)  # identical initial weights on every worker
        try:
            with self.strategy.scope():
                self.model = self._build_model()
                self.table = SegmentTable.from_config(config, self.model, None)
            if config.recipe == "fine_tune":  # phase 1 trains the last segment alone
                self.plan = dataclasses.replace(
                    self.plan, freeze_segments=self.table.num_segments - 1
                )
            if config.max_lr == "auto":
                self._resolve_auto_max_lr()
            self.schedule = self._make_schedule()  # restarts and cycles come from this one
            self.averaging = weight_averaging.WeightAveraging(
                self.config, self.plan, self.schedule, self.strategy
            )
            # The optimizer's rate: the schedule, switched to --swa_lr at the SWA start.
            lr = self.averaging.learning_rate(self.schedule)
            self.table = dataclasses.replace(self.table, schedule=lr)
            with self.strategy.scope():
                self._build_optimizer()
        finally:
            keras.config.set_dtype_policy(previous_policy)
        self.trainer = Trainer(
            self.strategy,
            self.model,
            self.optimizer,
            self.train_data,
            split_at=self.split_at,
            global_batch_size=config.global_batch_size,
            learning_rates=self.learning_rates,
            clipnorm=config.clipnorm,
            loss_scale=self.loss_scale,
            jit_compile=config.jit_compile,
        )
        self.evaluator = Evaluator(self.strategy, self.model, self.eval_data, config.num_classes)
        self.built = True
        return self

    def train_data(self, start_step: int):
        """The training stream from `start_step`, distributed: each worker reads its share.

        A global batch that does not divide over the replicas falls back to every worker
        reading the whole stream (`experimental_distribute_dataset`), as before.
        """
        global_batch = self.config.global_batch_size
        if global_batch % self.strategy.num_replicas_in_sync:
            dataset = self.data.train_dataset(global_batch, start_step=start_step)
            return strategy_lib.distribute_dataset(self.strategy, dataset)

        def per_worker(context):
            per_replica = context.get_per_replica_batch_size(global_batch)
            return self.data.train_dataset(
                per_replica, start_step=start_step, input_context=context
            )

        return strategy_lib.distribute_dataset(self.strategy, per_worker)

    def eval_data(self):
        """The eval split once, in order, distributed: each worker reads only its share.

        Each input pipeline reads and decodes only its replicas' slices of every global batch
        (`trainer.data.Data.eval_dataset` with input_context), the last partial batch
        included; `trainer.loop.compiled.EvalLoop` sums over replicas, so the result is the
        one-device evaluation's. Falls back to every worker reading the whole split
        (`experimental_distribute_dataset`, as before) when the global batch does not divide
        by the number of replicas.
        """
        global_batch = self.config.global_batch_size
        if global_batch % self.strategy.num_replicas_in_sync:
            dataset = self.data.eval_dataset(global_batch)
            return strategy_lib.distribute_dataset(self.strategy, dataset)

        def per_worker(context):
            per_replica = context.get_per_replica_batch_size(global_batch)
            return self.data.eval_dataset(per_replica, input_context=context)

        return strategy_lib.distribute_dataset(self.strategy, per_worker)

    def _make_schedule(self):
        config, plan = self.config, self.plan
        import schedules

        if config.recipe == "fine_tune":
            return fine_tune_schedule(config, plan)
        if config.schedule == "constant":
            return config.max_lr
        if config.schedule == "one_cycle":
            return schedules.OneCycle(config.max_lr, plan.total_steps, **one_cycle_args(config))
        if config.schedule == "cosine":
            return schedules.Cosine(
                config.max_lr,
                plan.total_steps,
                warmup_steps=config.warmup_steps,
                min_lr=config.min_lr,
            )
        return schedules.SGDR(
            config.max_lr,
            plan.first_cycle_steps,
            min_lr=config.min_lr,
            cycle_mult=config.cycle_mult,
            max_lr_decay=config.max_lr_decay,
            warmup_steps=config.warmup_steps,
        )

    @property
    def cycle_momentum(self) -> bool:
        """Whether momentum / beta_1 cycles with the schedule (--cycle_momentum resolved)."""
        config = self.config
        if config.cycle_momentum is not None:
            return config.cycle_momentum
        one_cycle = config.schedule == "one_cycle" or config.recipe == "fine_tune"
        return one_cycle and config.optimizer in CYCLE_MOMENTUM_OPTIMIZERS

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

    def _resolve_auto_max_lr(self) -> None:
        """--max_lr=auto: the number a resumed run chose, else the range test's valley."""
        config = self.config
        stored = (checkpoints.read_config(config.model_dir) or {}).get("full", {})
        value = stored.get("max_lr")
        if checkpoints.saved_steps(config.model_dir) and isinstance(value, (int, float)):
            logging.info("--max_lr=auto: %.4g, as chosen when this run started", value)
        else:
            self.lr_find_result = range_test.run(self, start_step=0)
            self._write_lr_find()
            value = self.lr_find_result.suggested_max_lr
            logging.info("--max_lr=auto: the LR range test's valley suggestion %.4g", value)
        self.config = config.replace(max_lr=float(value))

    def lr_find(self):
        """Runs the LR range test from the current (restored) step; nothing else changes.

        Writes lr_find.json and lr_find.png into model_dir (chief) and returns the
        `trainer.lr_find.finder.LRFinderResult`. After `--max_lr=auto` ran it at build time, that
        result is returned instead of a second test.
        """
        if self.lr_find_result is None:
            self.lr_find_result = range_test.run(self, start_step=self.step)
            self._write_lr_find()
        return self.lr_find_result

    def _write_lr_find(self):
        if self.is_chief:
            os.makedirs(self.config.model_dir, exist_ok=True)
            range_test.write(self.lr_find_result, self.config.model_dir)

    def _build_optimizer(self):
        config = self.config
        self.split_at, self.segment_of = self.table.split_at, self.table.segment_of
        self.num_segments, self.lr_mults = self.table.num_segments, self.table.lr_mults
        base = optimizers.make(
            config.optimizer,
            self.table.schedule,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            **self.averaging.optimizer_args(),
        )
        self.optimizer = optimizers.segmented(
            base,
            self.segment_of,
            self.lr_mults,
            aggregate_gradients=False,
            cycle_momentum=self.cycle_momentum,
        )
        # Every variable that can ever train, before the first trace (see DESIGN pitfalls).
        self.optimizer.build(self.model.trainable_variables)
        self.averaging.build(self.model, self.optimizer)
        objects = dict(model=self.model, optimizer=self.optimizer)
        objects.update(self.averaging.checkpoint_objects())
        self.loss_scale = None
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

    @property
    def step(self) -> int:
        """The global step (the optimizer's `iterations`)."""
        return self.trainer.step

    def learning_rates(self, step: int) -> list[float]:
        """Each segment's learning rate at global step `step`."""
        return self.table.learning_rates(step)

    def lr_table(self) -> str:
        """Segment, layers, parameters, multiplier and learning rate at step 0, one row each."""
        return self.table.format(self.model)

    def layer_report(self) -> str:
        """The --list_layers table: every layer with its segment, then the per-segment lrs."""
        return self.table.layer_report(self.model)

    # Restore -------------------------------------------------------------------------------

    def restore(self) -> int:
        """Resumes from the newest readable checkpoint in model_dir/ckpt; returns the step.

        Raises:
            IncompatibleCheckpointError: The checkpoints were made with a different
                configuration (checked before anything is loaded or written).
            UserError: Checkpoints exist but config.json is missing or unreadable, or no
                checkpoint is readable.
        """
        config = self.config
        if self.checkpointer.steps():
            checkpoints.check_compatible(config.model_dir, config, has_checkpoints=True)
        path = self.checkpointer.restore()
        if path:
            logging.info("Restored %s: resuming at step %d", path, self.step)
        elif self.is_chief:
            checkpoints.write_config(config.model_dir, config)
        if self.is_chief:
            run_dir.write_text(os.path.join(config.model_dir, "flags.txt"), config.to_flagfile())
        self.history = summaries.History(config.model_dir, self.step, self.is_chief)
        logging.info("Learning rates per segment:\n%s", self.lr_table())
        return self.step

    # Train ---------------------------------------------------------------------------------

    def _actions(self, writer, progress):
        config, plan = self.config, self.plan
        restarts = []
        if config.recipe != "none":
            restarts = list(self.schedule.boundaries)
        elif config.schedule == "sgdr":
            restarts = [s for s in self.schedule.restart_steps(plan.total_steps) if s > 0]
        momentum = None
        if self.cycle_momentum:
            momentum = lambda step: float(self.table.schedule.momentum(step))  # noqa: E731
        checkpoint = actions.Checkpoint(self.checkpointer, self.model, plan.checkpoint_every_steps)
        report = actions.Report(
            writer,
            progress,
            self.learning_rates,
            config.global_batch_size,
            plan.steps_per_epoch,
            restarts,
            momentum,
        )
        out = [actions.Unfreeze(self.trainer, plan), report]
        if self.averaging.snapshot_steps and self.is_chief:
            out.append(
                actions.Snapshot(
                    config.model_dir, self.model, self.schedule, self.averaging.snapshot_steps
                )
            )
        out += self.averaging.actions(self, writer)  # SWA updates, ensemble evaluations
        out += [
            actions.Evaluate(
                self.evaluator.evaluate,
                self.history,
                writer,
                plan.steps_per_epoch,
                plan.eval_every_steps,
            ),
            checkpoint,
            actions.Preemption(self._interrupts, checkpoint),
        ]
        return out, report

    def train(self) -> dict:
        """Trains from the restored step to the end; returns the metrics (also metrics.json).

        A run whose checkpoint is at the last step is complete: nothing trains, and the
        final evaluation runs only if metrics.json lacks it.

        Raises:
            Preempted: SIGTERM/SIGINT arrived; a checkpoint was saved first.
            NonFiniteError: The loss became NaN/inf; nothing after the last good checkpoint
                is saved.
        """
        if not self.built or self.history is None:
            raise UserError("Experiment.train: call build() and restore() first")
        steps.check_length(self.config)
        config, plan = self.config, self.plan
        started = time.time()
        writer = summaries.Summaries(config.model_dir, self.is_chief)
        progress = None
        if config.progress and self.is_chief:
            progress = ProgressBar(plan.steps_per_epoch, plan.total_steps)
        writer.write_hparams(config.to_dict())
        own = self.interrupts is None
        self._interrupts = Interrupts().install() if own else self.interrupts
        try:
            report = None
            if self.step >= plan.total_steps:
                logging.info("The run is complete at step %d", self.step)
            else:
                run_actions, report = self._actions(writer, progress)
                controller = Controller(
                    self.trainer,
                    run_actions,
                    total_steps=plan.total_steps,
                    steps_per_loop=plan.steps_per_loop,
                )
                try:
                    controller.run()
                except NonFiniteError as e:
                    raise NonFiniteError(f"{e}; {self.checkpointer.describe_latest()}") from None
            final = self.history.final
            if final is None or final["step"] != self.step:
                actions.Evaluate(
                    self.evaluator.evaluate, self.history, writer, plan.steps_per_epoch, None
                )(self.step)
            # A process that trained interprets its model; metrics.json is written once.
            extra = self.interpret() if report is not None and self.is_chief else {}
            extra.update(self.averaging.finish(self, writer))  # ensemble, SWA, EMA models
            return self._metrics(report, time.time() - started, extra)
        finally:
            if own:
                self._interrupts.uninstall()
            writer.close()

    def interpret(self) -> dict:
        """Confusion matrix, top losses and per-class precision/recall on the eval split.

        Writes confusion_matrix.png and top_losses.png into model_dir and TensorBoard
        (`trainer.reporting.interpret`); returns the metrics.json record.
        """
        from trainer.reporting import interpret

        config = self.config
        analysis = interpret.analyze(
            self.model,
            self.data.eval_dataset(config.global_batch_size),
            config.num_classes,
            class_names=self.info.class_names,
        )
        return interpret.write(analysis, self.info.class_names, config.model_dir, step=self.step)

    def _metrics(self, report, seconds: float, extra: dict) -> dict:
        metrics = {
            "step": self.step,
            "epochs": steps.epoch_of(self.step, self.plan.steps_per_epoch),
            "final": self.history.final,
            "best": self.history.best,
            "history": self.history.evals,
            "train": report.last if report else None,
            "images_per_sec": report.images_per_sec if report else None,
            "wall_time_sec": seconds,
            **extra,
        }
        if self.is_chief:
            summaries.write_metrics(self.config.model_dir, metrics)
        return metrics

    # Export --------------------------------------------------------------------------------

    @property
    def export_dir(self) -> str:
        return os.path.join(self.config.model_dir, EXPORT_DIR)

    def export_complete(self) -> bool:
        """Whether export/ holds every exported file (it is written atomically)."""
        subdirs = ["", *self.averaging.names]
        return all(
            os.path.exists(os.path.join(self.export_dir, d, f))
            for d in subdirs
            for f in EXPORT_FILES
        )

    def _write_labels(self, path: str, extra: dict) -> None:
        # What a user of the export needs beside the weights: the class of each output and
        # how evaluation fed images to the model (`trainer.data`), which `trainer.tools.predict`
        # follows: "preprocessing" is "resize" (the whole image resized with antialiasing to
        # image_size x image_size) or "center_crop" (the centered square of side eval_crop x
        # the shorter side, resized bilinearly); float32 RGB pixels in [0, 255] either way.
        size, crop = self.config.image_size, self.config.eval_crop
        preprocessing = self._eval_preprocessing()
        if preprocessing == "center_crop":
            view = (
                f"the centered square of side {crop:g} x the shorter side, resized (bilinear) "
                "to image_size x image_size"
            )
        else:
            view = "the whole image resized (bilinear, antialiased) to image_size x image_size"
        record = {
            "class_names": list(self.info.class_names),
            "image_size": size,
            "input": f"float32 RGB pixels in [0, 255]: {view}",
            "dataset": self.config.dataset,
            "step": self.step,
            **extra,
        }
        if preprocessing is not None:
            record.update(preprocessing=preprocessing, eval_crop=crop)
        run_dir.write_text(path, json.dumps(record, indent=2))

    def _eval_preprocessing(self) -> str | None:
        """How evaluation views an image, "resize" or "center_crop"; None when unknown."""
        return getattr(self.data, "eval_preprocessing", None)  # None: e.g. a test's own data

    def export(self) -> str:
        """Writes export/: model.keras, model.weights.h5, saved_model/ and labels.json.

        The model is converted to built-in Keras layers (`models.portable`), so model.keras
        loads with plain `keras.saving.load_model`. The SWA and EMA models, when the run has
        them, go to export/swa/ and export/ema/ (the same four files). The files are written
        to a temporary directory renamed into place at the end; a signal in between stops
        with `Preempted` and leaves the previous export (or none), and the next run writes it
        again.
        """
        directory = self.export_dir
        if not self.is_chief:
            return directory
        targets = [("", self.model, {}), *self.averaging.export_models(self)]
        for _, model, _ in targets:
            checkpoints.check_finite_weights(model, self.step)
        run_dir.remove_stale_temporaries(self.config.model_dir, EXPORT_DIR)
        tmp = f"{directory}.tmp-{os.getpid()}"
        own = self.interrupts is None
        interrupts = Interrupts().install() if own else self.interrupts
        try:
            for subdir, model, extra in targets:
                for write in self._export_writes(model, os.path.join(tmp, subdir), extra):
                    write()
                    faults.point("export")
                    if interrupts.pending is not None:
                        raise Preempted(
                            f"signal {interrupts.pending} during the export: the checkpoint at "
                            f"step {self.step} is kept; run the same command to write the export"
                        )
            run_dir.replace_dir(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if own:
                interrupts.uninstall()
        logging.info("Exported the model to %s", directory)
        return directory

    def _export_writes(self, model, directory: str, extra: dict):
        import models

        model.trainable = True  # the exported model is not frozen
        portable = models.portable(model)
        os.makedirs(directory, exist_ok=True)
        # The model is never compiled, so model.keras carries no (segmented) optimizer.
        return (
            lambda: self._write_labels(os.path.join(directory, "labels.json"), extra),
            lambda: portable.save(os.path.join(directory, "model.keras")),
            lambda: portable.save_weights(os.path.join(directory, "model.weights.h5")),
            lambda: portable.export(os.path.join(directory, "saved_model"), verbose=False),
        )
