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

import time

import keras
from absl import logging

from trainer import data, layout
from trainer.averaging import weight_averaging
from trainer.errors import NonFiniteError, UserError
from trainer.loop import actions, precision, steps
from trainer.loop import strategy as strategy_lib
from trainer.loop.controller import Controller
from trainer.loop.interrupts import Interrupts
from trainer.loop.runner import Evaluator, Trainer
from trainer.lr import optimizers
from trainer.lr import schedule as lr_schedule
from trainer.lr.table import SegmentTable, peak_lr, schedule_values
from trainer.lr_find import range_test
from trainer.reporting import interpret, summaries
from trainer.reporting.progress import ProgressBar
from trainer.run_dir import checkpoints
from trainer.run_dir import export as export_lib
from trainer.run_dir import files as run_dir


def _models():
    import models  # the model zoo, imported where a model is built

    return models


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
        self.config, self.strategy, self.model_fn = config, strategy, model_fn
        self.interrupts = interrupts
        self.is_chief = strategy_lib.is_chief(strategy)
        self.built = False
        self.history = None
        self.lr_find_result = None  # the LR range test's, once one ran
        self.lr_find_seconds = None  # how long it took, when it ran in this process

    # Build ---------------------------------------------------------------------------------

    def build(self) -> Experiment:
        """Loads the data and builds model, optimizer, trainer and checkpointer under scope."""
        config = self.config
        if config.image_size is None:  # the model's own (32, or a saved model's input size)
            size = (
                32
                if self.model_fn is not None
                else _models().input_size(config.model, config.custom_objects)
            )
            config = self.config = config.replace(image_size=size)
        self.data = data.load(config)
        self.info = self.data.info
        if config.num_classes is None:
            config = self.config = config.replace(num_classes=self.info.num_classes)
        elif config.num_classes < self.info.num_classes:
            raise UserError(
                f"--num_classes={config.num_classes} is smaller than the {self.info.num_classes}"
                f" classes of --dataset={config.dataset} (labels 0..{self.info.num_classes - 1})"
            )
        previous_policy = keras.config.dtype_policy()
        precision.set_policy(config.mixed_precision)
        keras.utils.set_random_seed(config.seed)  # identical initial weights on every worker
        try:
            with self.strategy.scope():
                self.model = self._build_model()
            self.table = SegmentTable.from_config(config, self.model)
            self.split_at, self.segment_of = self.table.split_at, self.table.segment_of
            self.num_segments, self.lr_mults = self.table.num_segments, self.table.lr_mults
            per_epoch = data.steps_per_epoch(self.info, config.global_batch_size)
            self.plan = steps.resolve(config, per_epoch, self.table.num_segments)
            if config.max_lr == "auto":  # the one change of config after the data's classes
                self.config = config = config.replace(max_lr=self._auto_max_lr())
                if config.min_lr > config.max_lr:
                    raise UserError(
                        f"--min_lr={config.min_lr:g} is above the --max_lr=auto the LR range "
                        f"test chose ({config.max_lr:.4g}); lower --min_lr"
                    )
            self.schedule = lr_schedule.make(config, self.plan)  # restarts and cycles
            self.averaging = weight_averaging.WeightAveraging(
                config, self.plan, self.schedule, self.strategy
            )
            # The optimizer's rate: the schedule, switched to --swa_lr at the SWA start.
            self.lr_schedule = self.averaging.learning_rate(self.schedule)
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
            train_bn=config.trains_bn,
        )
        self.evaluator = Evaluator(self.strategy, self.model, self.eval_data, config.num_classes)
        self._final = interpret.Final(
            self.model,
            lambda: self.data.eval_dataset(config.global_batch_size),
            config.num_classes,
            self.info.class_names,
            config.model_dir,
        )
        self.built = True
        return self

    def train_data(self, start_step: int):
        """The training stream from `start_step`, distributed: each worker reads its share
        (`trainer.loop.strategy.distribute_per_worker`)."""
        return strategy_lib.distribute_per_worker(
            self.strategy,
            self.config.global_batch_size,
            lambda batch, context: self.data.train_dataset(
                batch, start_step=start_step, input_context=context
            ),
        )

    def eval_data(self):
        """The eval split once, in order, distributed: each pipeline reads only its replicas'
        slices of every global batch (EvalLoop's sums equal one device's)."""
        return strategy_lib.distribute_per_worker(
            self.strategy,
            self.config.global_batch_size,
            lambda batch, context: self.data.eval_dataset(batch, input_context=context),
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
            new_head=config.new_head,
            input_scale=config.input_scale,
            custom_objects=config.custom_objects,
        )

    def _auto_max_lr(self) -> float:
        """--max_lr=auto: the number a resumed run chose, else the range test's suggestion
        named by --lr_find_suggestion (valley by default)."""
        value = range_test.chosen_max_lr(self.config.model_dir)
        if value is not None:
            logging.info("--max_lr=auto: %.4g, as chosen when this run started", value)
            return value
        name = self.config.lr_find_suggestion
        value = self.lr_find(start_step=0).suggestion(name)
        logging.info("--max_lr=auto: the LR range test's %s suggestion %.4g", name, value)
        return value

    def lr_find(self, start_step: int | None = None):
        """The LR range test (`trainer.lr_find.range_test`) from the restored step; nothing
        else changes. A test recorded in model_dir/lr_find.json with these settings is kept;
        else it runs and the chief writes lr_find.json and lr_find.png. Returns the
        `trainer.lr_find.finder.LRFinderResult`."""
        if self.lr_find_result is None:
            start = self.step if start_step is None else start_step
            interrupts = self.interrupts
            self.lr_find_result, self.lr_find_seconds = range_test.recorded_or_run(
                self.config,
                self.strategy,
                self.model,
                self.table,
                lambda step: self.train_data(start + step),
                first_trainable=self.plan.first_trainable_segment(start),
                interrupted=(lambda: interrupts.pending) if interrupts is not None else None,
                save=self.is_chief,
            )
        return self.lr_find_result

    def _build_optimizer(self):
        config = self.config
        base = optimizers.make(
            config.optimizer,
            self.lr_schedule,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            **self.averaging.optimizer_args(),
        )
        self.optimizer = optimizers.segmented(
            base,
            self.segment_of,
            self.lr_mults,
            aggregate_gradients=False,
            cycle_momentum=config.cycles_momentum,
            **optimizers.adaptive_args(config),
        )
        # Every variable that can ever train, before the first trace (see DESIGN pitfalls).
        self.optimizer.build(self.model.trainable_variables)
        self.averaging.build(
            self.model, self.optimizer, eval_data=self.eval_data, train_data=self.data.train_dataset
        )
        objects = dict(model=self.model, optimizer=self.optimizer)
        objects.update(self.averaging.checkpoint_objects())
        self.loss_scale = None
        if precision.needs_loss_scale(config.mixed_precision):
            self.loss_scale = precision.DynamicLossScale()
            objects["loss_scale"] = self.loss_scale
        self.checkpointer = checkpoints.Checkpointer(
            config.model_dir,
            config.keep_checkpoints,
            is_chief=self.is_chief,
            task_id=strategy_lib.task_id(self.strategy),
            **objects,
        )

    @property
    def step(self) -> int:
        """The global step (the optimizer's `iterations`)."""
        return self.trainer.step

    def learning_rates(self, step: int) -> list[float]:
        """Each segment's learning rate at global step `step`."""
        return self.table.learning_rates(self.lr_schedule, step)

    def lr_table(self) -> str:
        """Segment, layers, parameters, multiplier and peak learning rate, one row each."""
        return self.table.format(self.model, peak_lr(self.lr_schedule))

    def layer_report(self) -> str:
        """The --list_layers table: every layer with its segment, then the per-segment lrs."""
        return self.table.layer_report(self.model, peak_lr(self.lr_schedule))

    def restore(self, *, record: bool = True) -> int:
        """Resumes from the newest readable checkpoint in model_dir/ckpt; returns the step.

        With `record` (training) the chief then writes config.json and flags.txt, so both
        always describe the run (the LR range test alone writes neither).

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
        if self.is_chief and record:
            checkpoints.write_config(config.model_dir, config)
            run_dir.write_text(layout.Layout(config.model_dir).flags, config.to_flagfile())
        self.history = summaries.History(config.model_dir, self.step, self.is_chief)
        logging.info("Learning rates per segment:\n%s", self.lr_table())
        return self.step

    # Train ---------------------------------------------------------------------------------

    def _actions(self, writer, progress):
        config, plan = self.config, self.plan
        restarts = lr_schedule.boundaries(config, self.schedule, plan.total_steps)
        momentum = None
        if config.cycles_momentum:
            momentum = lambda steps: schedule_values(self.lr_schedule.momentum, steps)  # noqa: E731
        checkpoint = actions.Checkpoint(self.checkpointer, self.model, plan.checkpoint_every_steps)
        report = actions.Report(
            writer,
            progress,
            lambda steps: self.table.learning_rates_over(self.lr_schedule, steps),
            config.global_batch_size,
            plan.steps_per_epoch,
            restarts,
            momentum,
            self.optimizer.adaptive_multipliers if config.adaptive_lr != "none" else None,
        )
        out = [actions.Unfreeze(self.trainer, plan), report]
        snapshots = self.averaging.snapshot_steps
        if snapshots and self.is_chief:
            out.append(actions.Snapshot(config.model_dir, self.model, self.schedule, snapshots))
        out += self.averaging.actions(writer)  # SWA updates, ensemble evaluations
        every = plan.eval_every_steps
        evaluate = actions.Evaluate(
            self._evaluate, self.history, writer, plan.steps_per_epoch, every
        )
        out += [evaluate, checkpoint, actions.Preemption(self._interrupts, checkpoint)]
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
        averaged = [*self.averaging.names, *(["ensemble"] if self.averaging.ensemble else [])]
        writer.write_hparams(config.to_dict(), config.num_classes > 5, averaged, started)
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
                # Recorded now, so a kill during the work after training loses none of it.
                self._metrics(report, time.time() - started, {})
            final = self.history.final
            if final is None or final["step"] != self.step:
                actions.Evaluate(self._evaluate, self.history, writer, plan.steps_per_epoch, None)(
                    self.step
                )
            # Post-training work is done once: a process that trained does it; a re-run of a
            # complete run does only what its record lacks and keeps the rest.
            previous = {} if report is not None else summaries.kept(self.history.previous)
            extra = {}
            if self._interprets(report is not None or not summaries.interpreted(previous, config)):
                extra = self.interpret()
            if report is not None or any(k not in previous for k in self.averaging.records):
                extra.update(self.averaging.finish(writer, self.step))  # ensemble, SWA, EMA
            writer.end_session()  # the HParams session's status: success
            return self._metrics(report, time.time() - started, {**previous, **extra})
        finally:
            if own:
                self._interrupts.uninstall()
            writer.close()

    def _interprets(self, trained: bool) -> bool:
        # A process that trained interprets its model at the end: the chief of one worker
        # (interpretation reads the whole eval split on one device).
        return trained and self.is_chief and strategy_lib.num_workers(self.strategy) == 1

    def _evaluate(self, step: int) -> dict:
        """The eval record at `step`; at the last step of a run that interprets its model,
        from interpretation's pass, so the eval split is read once at the end."""
        if step == self.plan.total_steps and self._interprets(True):
            return self._final.record(step)
        return self.evaluator.evaluate()

    def interpret(self) -> dict:
        """Confusion matrix, top losses and per-class figures (`trainer.reporting.interpret`):
        the PNGs into model_dir and TensorBoard; returns the metrics.json record."""
        return self._final.write(self.step)

    def _metrics(self, report, seconds: float, extra: dict) -> dict:
        metrics = summaries.run_record(
            self.history, self.step, self.plan.steps_per_epoch, report, seconds, extra
        )
        if self.lr_find_seconds:
            metrics["lr_find_sec"] = self.lr_find_seconds
        if self.is_chief:
            summaries.write_metrics(self.config.model_dir, metrics)
        return metrics

    @property
    def export_dir(self) -> str:
        return layout.Layout(self.config.model_dir).export

    def export_complete(self) -> bool:
        """Whether export/ holds every exported file (it is written atomically)."""
        return export_lib.is_complete(self.config.model_dir, self.averaging.names)

    def export(self) -> str:
        """Writes export/ (`trainer.run_dir.export`): model.keras, model.weights.h5,
        saved_model/ and labels.json, plus export/swa/ and export/ema/ for averaged models.

        A signal in between stops with `Preempted` and leaves the previous export (or none);
        the next run writes it again.
        """
        if not self.is_chief:
            return self.export_dir
        targets = [("", self.model, {}), *self.averaging.export_models(self.step)]
        labels = export_lib.labels_record(
            self.config,
            self.info.class_names,
            self.step,
            getattr(self.data, "eval_preprocessing", None),  # None: e.g. a test's own data
        )
        own = self.interrupts is None
        interrupts = Interrupts().install() if own else self.interrupts
        try:
            return export_lib.write(
                self.config.model_dir,
                targets,
                labels=labels,
                step=self.step,
                interrupted=lambda: interrupts.pending,
            )
        finally:
            if own:
                interrupts.uninstall()
