"""Weight averaging in a run: snapshot ensembles, SWA and EMA, as actions and a closing step.

    averaging = WeightAveraging(config, plan, schedule, strategy)   # checks the plan
    lr = averaging.learning_rate(schedule)          # SWALR from the SWA start with --swa_lr
    optimizer = make(..., **averaging.optimizer_args())              # Keras' use_ema
    averaging.build(model, optimizer)               # under the scope, before the restore
    Checkpointer(..., **averaging.checkpoint_objects())
    controller actions += averaging.actions(...)    # AverageWeights, EvaluateEnsemble
    metrics.update(averaging.finish(...))           # after training: ensemble, swa, ema
    averaging.export_models(...)                    # export/swa/, export/ema/

When things happen (global steps; E = --swa_start_epoch * steps_per_epoch, rounded):

* Snapshot ensemble (`--ensemble_snapshots=M`, Huang et al. 2017): snapshots are taken at
  every SGDR cycle end, the run's last step included when it ends a cycle. From the M-th
  cycle end on the ensemble of the last M snapshots is evaluated after each restart, and once
  more at the end of the run (`trainer.averaging.ensemble.ensemble_evaluate`: one model's weights
  at a
  time plus the running sum of probabilities).
* SWA (`--swa_start_epoch`, Izmailov et al. 2018): the weights join an equal average
  (`trainer.averaging.weights.WeightAverage`, float32, checkpointed) at every SGDR cycle end >= E;
  with another schedule, or with `--swa_lr` (a constant rate has no cycles), every
  `--swa_every_epochs` (default 1) after E and at the last step. With `--swa_lr` the head's
  rate is that constant from E on (`schedules.swa.SWALR`, segment multipliers kept).
* EMA (`--ema_decay=D`): Keras' optimizer EMA (`use_ema=True, ema_momentum=D`), updated in
  `optimizer.apply` at every applied step: `avg <- D * avg + (1 - D) * w`, the first step
  copying w. The copies start at the initial weights, so a first step skipped by float16 loss
  scaling does not leave them at zero (Keras' start is "iterations == 0", not "first update").

After training each averaged model is a clone of the training model holding the averaged
weights; its BatchNorm statistics are recomputed (`trainer.averaging.weights.update_bn`, torch's
`update_bn`) over one epoch of the training split, in the run's epoch-0 order, without
augmentation unless `--swa_bn_augment`. This is done for EMA too: the training model's
moving statistics belong to the last weights, not to their average. The clone is evaluated
(metrics.json `swa` / `ema`, TensorBoard eval/swa/*, eval/ema/*) and exported beside the
last-step model.
"""

from __future__ import annotations

import os

import keras
from absl import logging

from trainer import layout
from trainer.averaging.ensemble import Snapshot, check_snapshots, ensemble_evaluate, set_aside
from trainer.averaging.weights import WeightAverage, averaged_weights, update_bn
from trainer.errors import UserError
from trainer.loop import strategy as strategy_lib
from trainer.loop.controller import Action, When
from trainer.loop.runner import Evaluator
from trainer.lr import keras_private
from trainer.reporting import summaries

SWA, EMA, ENSEMBLE = "swa", "ema", "snapshot_ensemble"
SNAPSHOT_DIR = layout.SNAPSHOT_DIR
# What export/swa/labels.json and export/ema/labels.json say about the weights.
_LABELS = ("models_averaged", "steps_averaged", "decay", "bn_batches", "bn_augment")


# The plan: which steps ----------------------------------------------------------------------


def cycle_ends(schedule, total_steps: int) -> list[int]:
    """The steps <= total_steps at which an SGDR cycle ends; entry k ends cycle k."""
    return schedule.restart_steps(total_steps + 1)[1:]


def swa_start_step(config, plan) -> int:
    return round(config.swa_start_epoch * plan.steps_per_epoch)


def averages_at_cycle_ends(config) -> bool:
    """SGDR without --swa_lr averages at cycle ends; otherwise every --swa_every_epochs."""
    return config.has_restarts and config.swa_lr is None


def swa_steps(config, plan, schedule) -> list[int]:
    """The global steps after which the weights join the SWA average (see the module doc)."""
    start, total = swa_start_step(config, plan), plan.total_steps
    if averages_at_cycle_ends(config):
        return [s for s in cycle_ends(schedule, total) if s >= start]
    every = max(1, round((config.swa_every_epochs or 1.0) * plan.steps_per_epoch))
    steps = list(range(start + every, total + 1, every))
    if start < total and (not steps or steps[-1] != total):
        steps.append(total)
    return steps


def _epochs(step: int, plan) -> str:
    return f"{step / plan.steps_per_epoch:g} epochs"


def check_plan(config, plan, schedule, strategy) -> None:
    """The checks that need the run's length; UserError naming the flag and the steps."""
    if config.ensemble_snapshots is not None:
        if not config.has_restarts:
            raise UserError(
                f"--ensemble_snapshots={config.ensemble_snapshots} ensembles the snapshots "
                "taken at SGDR restarts; use --schedule=sgdr"
            )
        if strategy_lib.num_workers(strategy) > 1:
            raise UserError(
                f"--ensemble_snapshots={config.ensemble_snapshots}: under multi_worker the "
                "snapshots live on the chief only; evaluate them after training with "
                f"python -m trainer.ensemble --model_dir={config.model_dir}"
            )
        ends = cycle_ends(schedule, plan.total_steps)
        if len(ends) < config.ensemble_snapshots:
            raise UserError(
                f"--ensemble_snapshots={config.ensemble_snapshots}: the run ends only "
                f"{len(ends)} SGDR cycles (at steps {ends or 'none'} of {plan.total_steps}); "
                "train longer or ensemble fewer snapshots"
            )
    if config.swa_start_epoch is None:
        return
    start, total = swa_start_step(config, plan), plan.total_steps
    flag = f"--swa_start_epoch={config.swa_start_epoch:g}"
    if start >= total:
        raise UserError(
            f"{flag} is step {start}, at or after the end of the run (step {total}, "
            f"{_epochs(total, plan)}); SWA must start before the end"
        )
    if not swa_steps(config, plan, schedule):
        ends = cycle_ends(schedule, total)
        raise UserError(
            f"{flag} (step {start}): no SGDR cycle ends between it and the end of the run "
            f"(cycles end at steps {ends or 'none'}; the last step {total}); start earlier or "
            "give --swa_lr"
        )


# Actions ------------------------------------------------------------------------------------


class AverageWeights(Action):
    """Adds the model's weights to the SWA average at the plan's SWA steps.

    Listed before the Checkpoint action: a checkpoint at step s holds the update at s, and a
    run resumed from it never repeats that update.
    """

    def __init__(self, average: WeightAverage, steps):
        self.average = average
        self.when = When(steps=tuple(steps))

    def __call__(self, step, logs=None):
        self.average.update()
        logging.info("Step %d: SWA average of %d models", step, self.average.num_averaged)


class EvaluateEnsemble(Action):
    """Evaluates the snapshot ensemble after the restarts from the M-th snapshot on."""

    def __init__(self, evaluate_fn, steps):
        self.evaluate_fn = evaluate_fn
        self.when = When(steps=tuple(steps))

    def __call__(self, step, logs=None):
        self.evaluate_fn(step)


# The run's weight averaging ----------------------------------------------------------------


class WeightAveraging:
    """Snapshot ensembles, SWA and EMA of one run (each on only when its flag is given).

    Args:
        config: The run's `trainer.config.Config`.
        plan: Its `trainer.loop.steps.Plan`.
        schedule: The base learning-rate schedule (SGDR restarts and cycles come from it).
        strategy: The run's strategy.

    Raises:
        UserError: A setting that does not fit the run (`check_plan`).
    """

    def __init__(self, config, plan, schedule, strategy):
        self.config, self.plan, self.schedule, self.strategy = config, plan, schedule, strategy
        has_length = config.epochs is not None or config.train_steps is not None
        if has_length:  # not for --list_layers or an LR range test alone
            check_plan(config, plan, schedule, strategy)
        self.swa = config.swa_start_epoch is not None and has_length
        self.ema = config.ema_decay is not None
        self.ensemble = config.ensemble_snapshots is not None and has_length
        self.snapshot_steps = []  # cycle ends: --snapshot_at_restarts, implied by the ensemble
        if (config.snapshot_at_restarts or self.ensemble) and config.has_restarts:
            self.snapshot_steps = cycle_ends(schedule, plan.total_steps)
        self.swa_steps = swa_steps(config, plan, schedule) if self.swa else []
        self.average = None
        self.optimizer = None
        self._models = {}  # name -> (model, its metrics record)

    @property
    def records(self) -> list[str]:
        """The metrics.json keys `finish` writes: "ensemble", "swa", "ema" (when on)."""
        return ([ENSEMBLE] if self.ensemble else []) + self.names

    @property
    def names(self) -> list[str]:
        """The averaged models this run exports: "swa", "ema"."""
        return [name for name, on in ((SWA, self.swa), (EMA, self.ema)) if on]

    # Build ---------------------------------------------------------------------------------

    def learning_rate(self, schedule):
        """`schedule`, switched to the constant --swa_lr at the SWA start when that is set."""
        if not self.swa or self.config.swa_lr is None:
            return schedule
        from schedules.swa import SWALR

        return SWALR(schedule, swa_start_step(self.config, self.plan), self.config.swa_lr)

    def optimizer_args(self) -> dict:
        """Keras optimizer arguments: the EMA of --ema_decay."""
        if not self.ema:
            return {}
        return {"use_ema": True, "ema_momentum": float(self.config.ema_decay)}

    def build(self, model, optimizer, *, eval_data, train_data) -> None:
        """Creates the SWA average and starts the EMA at the weights; under the scope.

        Args:
            model: The run's model (its weights are averaged).
            optimizer: The run's optimizer (it holds the EMA copies).
            eval_data: `() -> distributed dataset` of the eval split, once, in order.
            train_data: `Data.train_dataset(batch_size, augment=...)`: one epoch of it in the
                run's epoch-0 order, whole global batches, is what an averaged model's
                BatchNorm statistics are recomputed over.
        """
        self.model, self.optimizer = model, optimizer
        self._eval_data, self._train_data = eval_data, train_data
        if self.swa:
            self.average = WeightAverage(averaged_weights(model))
        if self.ema:
            for variable, copy in zip(
                keras_private.built_variables(optimizer), keras_private.ema_copies(optimizer)
            ):
                if copy is not None:
                    copy.assign(variable)

    def checkpoint_objects(self) -> dict:
        """What the checkpoint holds besides model and optimizer (EMA copies are in it)."""
        return {"weight_average": self.average} if self.swa else {}

    def actions(self, writer) -> list[Action]:
        """The controller actions (after Snapshot, before Evaluate and Checkpoint)."""
        out = []
        if self.swa:
            out.append(AverageWeights(self.average, self.swa_steps))
        if self.ensemble:
            m, total = self.config.ensemble_snapshots, self.plan.total_steps
            # The evaluation at the end is finish()'s, also for a run resumed complete.
            due = [s for s in self.snapshot_steps[m - 1 :] if s < total]
            out.append(EvaluateEnsemble(lambda step: self.evaluate_ensemble(writer, step), due))
        return out

    # Evaluations -----------------------------------------------------------------------------

    def _report(self, writer, name: str, step: int, results: dict) -> None:
        summaries.log_eval(step, step / self.plan.steps_per_epoch, results, label=name)
        scalars = {
            f"{name}/{k}": v for k, v in results.items() if k in ("loss", "accuracy", "top5")
        }
        writer.write("eval", step, scalars)

    def evaluate_ensemble(self, writer, step: int) -> dict | None:
        """The ensemble of the last M snapshots taken up to `step`; None when none is left.

        A damaged snapshot (truncated, garbage, empty, a directory, weights that do not load)
        is moved to snapshots/broken/ with one log line and left out, as a missing one is:
        the ensemble goes on with fewer members and says so. It never stops training.
        """
        m = self.config.ensemble_snapshots
        cycles = [k for k, end in enumerate(self.snapshot_steps) if end <= step][-m:]
        if len(cycles) < m:
            logging.warning(
                "Step %d: no snapshot ensemble of %d (only cycles %s have ended)", step, m, cycles
            )
            return None
        directory = os.path.join(self.config.model_dir, SNAPSHOT_DIR)
        snapshots = [Snapshot(k, os.path.join(directory, layout.snapshot_name(k))) for k in cycles]
        readable, lines = check_snapshots(snapshots)
        for line in lines:
            logging.warning("Step %d: %s", step, line)

        def unreadable(path, reason):
            logging.warning("Step %d: %s", step, set_aside(path, reason))

        result = None
        if readable:
            try:
                result = ensemble_evaluate(
                    self.strategy,
                    self.model,
                    [s.path for s in readable],
                    self._eval_data,
                    self.config.num_classes,
                    on_unreadable=unreadable,
                )
            except UserError:  # no member loaded: each was named above
                result = None
        if result is None:
            logging.warning(
                "Step %d: no snapshot ensemble: none of cycles %s is readable", step, cycles
            )
            return None
        members = result.pop("per_member")
        loaded = {member["source"] for member in members}
        cycles = [s.cycle for s in readable if s.path in loaded]
        result.pop("unreadable", None)  # named in the log lines; `cycles` holds the members
        if len(cycles) < m:
            left_out = [s.cycle for s in snapshots if s.cycle not in cycles]
            logging.warning(
                "Step %d: snapshot ensemble of %d, not %d (cycles %s left out)",
                step,
                len(cycles),
                m,
                left_out,
            )
        result.update(
            step=step,
            cycles=cycles,
            steps=[self.snapshot_steps[k] for k in cycles],
            per_snapshot=[
                {"cycle": k, "step": self.snapshot_steps[k], **_metrics_only(member)}
                for k, member in zip(cycles, members)
            ],
        )
        self._report(writer, "ensemble", step, result)
        return result

    def finish(self, writer, step: int) -> dict:
        """After training: the ensemble at the end, the SWA and EMA models; metrics records."""
        out = {}
        if self.ensemble:
            result = self.evaluate_ensemble(writer, step)
            if result is not None:
                out[ENSEMBLE] = result
        for name in self.names:
            model_record = self._averaged_model(name, step)
            if model_record is not None:
                self._report(writer, name, step, model_record[1])
                out[name] = model_record[1]
        return out

    def export_models(self, step: int) -> list[tuple[str, object, dict]]:
        """(name, model, labels.json additions) of each averaged model; made now if need be."""
        out = []
        for name in self.names:
            model_record = self._averaged_model(name, step)
            if model_record is not None:
                model, record = model_record
                labels = {k: record[k] for k in _LABELS if k in record}
                out.append((name, model, {"weights": name, **labels}))
        return out

    # The averaged models ---------------------------------------------------------------------

    def _averaged_model(self, name: str, step: int):
        """(model, record) of the SWA or EMA weights with recomputed BN statistics, cached."""
        if name in self._models and self._models[name][1]["step"] == step:
            return self._models[name]
        if name == SWA and self.average.num_averaged == 0:
            logging.warning("No SWA model at step %d: nothing was averaged yet", step)
            return None
        source = self.model
        with self.strategy.scope():
            model = keras.models.clone_model(source)
        targets = _matching_weights(source, model)
        for target, value in zip(targets, source.get_weights()):
            target.assign(value)
        if name == SWA:
            self.average.copy_to(averaged_weights(model))
            record = {
                "models_averaged": self.average.num_averaged,
                "steps_averaged": self._swa_steps_held(step),
                "start_step": swa_start_step(self.config, self.plan),
            }
        else:
            index = {id(w): i for i, w in enumerate(source.weights)}
            built = keras_private.built_variables(self.optimizer)
            self.optimizer.finalize_variable_values([targets[index[id(v)]] for v in built])
            record = {"decay": float(self.config.ema_decay)}
        bn_data = self._train_data(
            self.config.global_batch_size, augment=bool(self.config.swa_bn_augment)
        ).take(self.plan.steps_per_epoch)
        batches = update_bn(model, bn_data, self.strategy)
        evaluator = Evaluator(self.strategy, model, self._eval_data, self.config.num_classes)
        record = {
            **evaluator.evaluate(),
            **record,
            "step": step,
            "bn_batches": batches,
            "bn_augment": bool(self.config.swa_bn_augment),
        }
        self._models[name] = (model, record)
        return self._models[name]

    def _swa_steps_held(self, step: int) -> list[int]:
        steps = [s for s in self.swa_steps if s <= step]
        if len(steps) != self.average.num_averaged:
            logging.warning(
                "The SWA average holds %d models; this configuration averages at steps %s",
                self.average.num_averaged,
                steps,
            )
        return steps


def _matching_weights(source, clone) -> list:
    """The clone's weights in `source.weights` order, checked by shape and name."""
    targets = clone.weights
    pairs = list(zip(source.weights, targets))
    if len(targets) != len(source.weights) or any(
        tuple(a.shape) != tuple(b.shape) or a.name != b.name for a, b in pairs
    ):
        raise ValueError(f"weight averaging: the clone of {source.name} has other weights")
    return targets


def _metrics_only(member: dict) -> dict:
    return {k: v for k, v in member.items() if k != "source"}
