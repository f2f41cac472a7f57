"""The LR range test in a custom loop: `lr_find(model, dataset, optimizer)`.

    from trainer.lr_find import lr_find
    result = lr_find(model, train_ds, segmented(make("adam", 1e-3), segment_of, lr_mults))
    result.suggested_max_lr

The model and the optimizer are left exactly as they were (`trainer.loop.state`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer.loop import state
from trainer.lr import keras_private
from trainer.lr_find.finder import ExponentialRange, LRFinderResult, RangeTest


def lr_find(
    model,
    dataset,
    optimizer,
    *,
    loss=None,
    start=1e-7,
    end=10.0,
    num_steps=100,
    beta=0.98,
    diverge=4.0,
) -> LRFinderResult:
    """Runs the range test on `model` and leaves the model and `optimizer` as they were.

    The sweep trains with a fresh optimizer of `type(optimizer)` and `optimizer`'s config,
    learning rate `ExponentialRange(start, end, num_steps)` (so a segmented optimizer keeps
    its `lr_mults`: the curve is that of the base learning rate, the last segment's when its
    multiplier is 1). Every `model.variables` entry (weights, BatchNorm statistics, seed
    generator states) is restored bit for bit afterwards, also after an exception.

    Runs in `model.distribute_strategy` (the strategy whose scope built the model): a
    `tf.data.Dataset` is then split across replicas like `model.fit` does.

    Args:
        model: A built Keras model.
        dataset: An iterable of `(x, y)` batches, e.g. a `tf.data.Dataset`; iterated again
            if it ends before the test does.
        optimizer: A Keras optimizer (e.g. from `trainer.lr.optimizers.segmented`); not used for
            updates and not changed. Not a `LossScaleOptimizer`.
        loss: A `keras.losses.Loss`, or a function of `(y, y_pred)` returning per-example
            losses; default `SparseCategoricalCrossentropy(from_logits=True)`. The model's
            own losses (`model.losses`, e.g. regularizers) are added, as `model.fit` does.
        start, end, num_steps, beta, diverge: As in `RangeTest`.

    Returns:
        The `LRFinderResult`.

    Raises:
        ValueError: Bad arguments, an unbuilt model, or a dataset that yields no batches.
    """
    test = RangeTest(start, end, num_steps, beta, diverge)
    if not model.built or not model.trainable_variables:
        raise ValueError("lr_find: build the model first (it has no trainable variables)")
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError("lr_find: pass the optimizer inside the LossScaleOptimizer")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True) if loss is None else loss
    strategy = model.distribute_strategy
    with strategy.scope():
        sweep = _sweep_optimizer(optimizer, ExponentialRange(start, end, num_steps))
        sweep.build(model.trainable_variables)  # before the trace, as a strategy requires
        step = _train_step(model, sweep, loss, strategy)
        with state.restored(model.variables):
            for i, (x, y) in enumerate(_batches(dataset, strategy)):
                if not test.record(test.lr(i), float(step(x, y))):
                    break
    return test.result()


def _sweep_optimizer(optimizer, schedule):
    """A fresh, unbuilt optimizer like `optimizer`, with `schedule` as its learning rate."""
    config = optimizer.get_config()
    config["learning_rate"] = schedule
    fresh = type(optimizer).from_config(config)
    keras_private.copy_weight_decay_exclusions(optimizer, fresh)
    return fresh


def _train_step(model, optimizer, loss_fn, strategy):
    """One compiled training step on a (possibly per-replica) batch; returns the mean loss."""
    is_keras_loss = isinstance(loss_fn, keras.losses.Loss)

    def replica_step(x, y):
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            # Per-replica losses carry a 1/replicas factor so the summed gradients are the
            # global batch's. Keras losses apply it themselves (like model.fit's).
            value = loss_fn(y, y_pred)
            if not is_keras_loss:
                value = tf.reduce_mean(value) / replicas
            if model.losses:
                extra = tf.add_n([tf.reduce_sum(t) for t in model.losses])
                value = value + tf.cast(extra, value.dtype) / replicas
            scaled = optimizer.scale_loss(value)
        variables = model.trainable_variables
        optimizer.apply(tape.gradient(scaled, variables), variables)
        return value

    @tf.function(reduce_retracing=True)  # a smaller last batch would otherwise retrace
    def step(x, y):
        per_replica = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return step


def _batches(dataset, strategy):
    """Yields (x, y) without end, iterating `dataset` again whenever it is exhausted."""
    if isinstance(dataset, tf.data.Dataset) and strategy.num_replicas_in_sync > 1:
        dataset = strategy.experimental_distribute_dataset(dataset)
    seen = 0
    while True:
        count = 0
        for batch in dataset:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ValueError(
                    f"lr_find: each batch must be an (x, y) pair; got {type(batch).__name__}"
                )
            count += 1
            yield batch
        if count == 0:
            raise ValueError(
                "lr_find: the dataset yields no batches"
                + (f" when iterated again after {seen}; pass a re-iterable one" if seen else "")
            )
        seen += count
