"""The LR range test of a run (`--lr_find`, `--max_lr=auto`): a short run of its own.

It trains a throw-away segmented optimizer (same class, config and segment multipliers as the
run's, learning rate `trainer.lr_find.finder.ExponentialRange`) through its own `Trainer`, on the
run's
training pipeline from the run's current step, one step per call so every loss is seen; then
it puts back every model variable and the layers' trainable flags. The run's optimizer, its
global step, its loss scale and its input iterator are never touched, so training afterwards is
exactly what it would have been without the test (tested).

Under a strategy the test runs on every replica and worker like training does; the losses are
global-batch means, so every worker takes the same decision to stop. The chief writes
lr_find.json and lr_find.png.
"""

from __future__ import annotations

import os

from absl import logging

from trainer.errors import NonFiniteError
from trainer.loop import precision
from trainer.loop.runner import Trainer
from trainer.lr import optimizers, segments
from trainer.lr_find import finder as lr_finder

JSON_FILE = "lr_find.json"
PLOT_FILE = "lr_find.png"


def run(experiment, *, start_step: int) -> lr_finder.LRFinderResult:
    """Runs the range test on a built experiment from global step `start_step`.

    Args:
        experiment: A built `trainer.experiment.Experiment` (model, table, data, plan).
        start_step: The run's global step: the test reads the batches training would read
            from there, and freezes the segments the plan freezes there.

    Returns:
        The curve and the suggestions (`LRFinderResult`).
    """
    config, model = experiment.config, experiment.model
    test = lr_finder.RangeTest(config.lr_find_start, config.lr_find_end, config.lr_find_steps)
    layers = [model, *segments.flatten_layers(model)]
    flags = [layer.trainable for layer in layers]
    saved = [v.numpy() for v in model.variables]
    try:
        trainer = _trainer(experiment, start_step)
        trainer.set_first_trainable(experiment.plan.first_trainable_segment(start_step))
        for i in range(config.lr_find_steps):
            try:
                loss = float(trainer.train(1)["loss"][0])
            except NonFiniteError:
                loss = float("nan")
            if not test.record(test.lr(i), loss):
                break
    finally:
        for v, value in zip(model.variables, saved):
            v.assign(value)
        for layer, flag in zip(layers, flags):  # pre-order, like segments.freeze sets them
            layer.trainable = flag
    result = test.result()
    logging.info(
        "LR range test: %d steps from %.3g (%s); %s",
        len(result.lrs),
        config.lr_find_start,
        result.stop_reason,
        result.format_line(),
    )
    return result


def _trainer(experiment, start_step: int) -> Trainer:
    config, table, model = experiment.config, experiment.table, experiment.model
    strategy = experiment.strategy
    schedule = lr_finder.ExponentialRange(
        config.lr_find_start, config.lr_find_end, config.lr_find_steps
    )
    with strategy.scope():
        base = optimizers.make(
            config.optimizer, schedule, momentum=config.momentum, weight_decay=config.weight_decay
        )
        optimizer = optimizers.segmented(
            base, table.segment_of, table.lr_mults, aggregate_gradients=False
        )
        optimizer.build(segments.freeze(model, table.split_at, 0))
        loss_scale = None
        if precision.needs_loss_scale(config.mixed_precision):
            loss_scale = precision.DynamicLossScale()
    return Trainer(
        strategy,
        model,
        optimizer,
        lambda step: experiment.train_data(start_step + step),
        split_at=table.split_at,
        global_batch_size=config.global_batch_size,
        clipnorm=config.clipnorm,
        loss_scale=loss_scale,
        jit_compile=config.jit_compile,
    )


def write(result, model_dir: str) -> list[str]:
    """Writes lr_find.json and (with matplotlib) lr_find.png; returns the paths written."""
    paths = [os.path.join(model_dir, JSON_FILE)]
    result.to_json(paths[0])
    try:
        result.plot(os.path.join(model_dir, PLOT_FILE))
        paths.append(os.path.join(model_dir, PLOT_FILE))
    except ImportError as e:
        logging.warning("LR range test: no %s (%s)", PLOT_FILE, e)
    return paths
