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

import json
import os
import time

from absl import logging

from trainer import layout
from trainer.errors import NonFiniteError, Preempted, UserError
from trainer.loop import precision, state
from trainer.loop.runner import Trainer
from trainer.lr import optimizers, segments
from trainer.lr_find import finder as lr_finder
from trainer.run_dir import checkpoints, faults

JSON_FILE = layout.LR_FIND_JSON
PLOT_FILE = layout.LR_FIND_PLOT


def run(
    config, strategy, model, table, train_data, *, first_trainable: int, interrupted=None
) -> lr_finder.LRFinderResult:
    """Runs the range test on a built model.

    Args:
        config: The run's `Config` (lr_find_*, optimizer, batch, precision settings).
        strategy: The strategy the model was built under.
        model: The run's model; every variable and trainable flag is put back afterwards.
        table: The run's `trainer.lr.table.SegmentTable` (split points, multipliers).
        train_data: `step -> distributed dataset`: the batches training would read from the
            run's current step on, `step` counted from there.
        first_trainable: The first trainable segment at the run's current step.
        interrupted: `() -> signal number or None`, asked between steps: a signal stops the
            test within one step with `Preempted` (the model is put back first).

    Returns:
        The curve and the suggestions (`LRFinderResult`).
    """
    test = lr_finder.RangeTest(config.lr_find_start, config.lr_find_end, config.lr_find_steps)
    layers = [model, *segments.flatten_layers(model)]  # pre-order, as segments.freeze sets them
    with state.restored(model.variables, layers=layers):
        trainer = _trainer(config, strategy, model, table, train_data)
        trainer.set_first_trainable(first_trainable)
        for i in range(config.lr_find_steps):
            signal = interrupted() if interrupted is not None else None
            if signal is not None:
                raise Preempted(
                    f"signal {signal} during the LR range test (step {i} of "
                    f"{config.lr_find_steps}): stopped before training"
                )
            try:
                loss = float(trainer.train(1)["loss"][0])
            except NonFiniteError:
                loss = float("nan")
            faults.point("lr_find")  # crash tests: a kill during the range test
            if not test.record(test.lr(i), loss):
                break
    result = test.result()
    logging.info(
        "LR range test: %d steps from %.3g (%s); %s",
        len(result.lrs),
        config.lr_find_start,
        result.stop_reason,
        result.format_line(),
    )
    return result


def _trainer(config, strategy, model, table, train_data) -> Trainer:
    schedule = lr_finder.ExponentialRange(
        config.lr_find_start, config.lr_find_end, config.lr_find_steps
    )
    with strategy.scope():
        base = optimizers.make(
            config.optimizer, schedule, momentum=config.momentum, weight_decay=config.weight_decay
        )
        optimizer = optimizers.segmented(
            base,
            table.segment_of,
            table.lr_mults,
            aggregate_gradients=False,
            **optimizers.adaptive_args(config),
        )
        optimizer.build(segments.freeze(model, table.split_at, 0))
        loss_scale = None
        if precision.needs_loss_scale(config.mixed_precision):
            loss_scale = precision.DynamicLossScale()
    return Trainer(
        strategy,
        model,
        optimizer,
        train_data,
        split_at=table.split_at,
        global_batch_size=config.global_batch_size,
        clipnorm=config.clipnorm,
        loss_scale=loss_scale,
        jit_compile=config.jit_compile,
        train_bn=config.trains_bn,
    )


def recorded(config) -> lr_finder.LRFinderResult | None:
    """The range test recorded in model_dir/lr_find.json with this run's settings, or None.

    A recorded test is kept: re-running a run (also a finished one, whose weights are trained)
    does not repeat it. Other settings (--lr_find_start/end/steps) ask for a new test.

    Raises:
        UserError: lr_find.json exists but is unreadable (named, with what to do).
    """
    path = os.path.join(config.model_dir, JSON_FILE)
    if not os.path.lexists(path):
        return None
    try:
        with open(path) as f:
            result = lr_finder.LRFinderResult.from_dict(json.load(f))
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path} is unreadable ({str(e).splitlines()[0]}); delete it to run the LR range "
            "test again"
        ) from None
    settings = (result.start, result.end, result.num_steps)
    if settings != (config.lr_find_start, config.lr_find_end, config.lr_find_steps):
        logging.info("LR range test: %s has other settings %s; testing again", path, settings)
        return None
    logging.info("LR range test: kept the one recorded in %s (delete it to test again)", path)
    return result


def chosen_max_lr(model_dir: str) -> float | None:
    """The --max_lr a resumed --max_lr=auto run chose when it started (config.json), else None."""
    stored = (checkpoints.read_config(model_dir) or {}).get("full", {})
    value = stored.get("max_lr")
    if checkpoints.saved_steps(model_dir) and isinstance(value, (int, float)):
        return float(value)
    return None


def recorded_or_run(config, *args, save: bool = True, **kwargs):
    """(result, seconds): the test recorded with these settings (`recorded`; seconds None),
    else `run(config, *args, **kwargs)` and its time, written into model_dir when `save`."""
    result = recorded(config)
    if result is not None:
        return result, None
    started = time.time()
    result = run(config, *args, **kwargs)
    if save:
        os.makedirs(config.model_dir, exist_ok=True)
        write(result, config.model_dir)
    return result, time.time() - started


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
