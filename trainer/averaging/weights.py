"""Stochastic weight averaging (SWA): an equal running average of weights, and BN recompute.

    with strategy.scope():
        average = WeightAverage(averaged_weights(model))
    ...
    average.update()                      # e.g. at the end of each SGDR cycle, from the driver
    ...
    average.copy_to(averaged_weights(export_model))  # or average.assign_to_model()
    update_bn(export_model, train_batches, strategy)

The math (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better
Generalization", UAI 2018, Algorithm 1): after the k-th update (k = 1, 2, ...)

    w_swa <- w_swa + (w - w_swa) / k          # = (w_1 + ... + w_k) / k

so every collected weight vector counts the same, whenever it was collected. The BatchNorm
statistics of the averaged weights are not the average of the collected statistics: the paper
recomputes them with one pass over the training data (`update_bn`).
"""

from __future__ import annotations

import re

import keras
import numpy as np
import tensorflow as tf

from trainer.loop.strategy import distribute_dataset, pass_iterator
from trainer.lr import segments
from trainer.run_dir import faults

_BN_STATISTICS = ("moving_mean", "moving_variance")


def _tf_variable(variable):
    """The tf.Variable (or distributed variable) behind a Keras 3 variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _check_cross_replica(what: str) -> None:
    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        raise RuntimeError(
            f"{what} must be called in cross-replica context (from the driver, not inside "
            "strategy.run)"
        )


def batch_norm_layers(model) -> list:
    """Every `keras.layers.BatchNormalization` (or subclass) of `model`, nested ones included."""
    return [
        layer
        for layer in segments.flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def averaged_weights(model) -> list:
    """The weights SWA averages: every floating-point weight except BatchNorm statistics.

    Unlike `model.trainable_weights` the answer does not depend on which layers are frozen at
    the moment (frozen weights do not change, so averaging them is harmless, and a segment
    unfrozen later is averaged too). BatchNorm moving statistics are recomputed instead
    (`update_bn`); integer state (random seed generators) is never averaged.
    """
    statistics = {
        id(getattr(layer, name))
        for layer in batch_norm_layers(model)
        for name in (*_BN_STATISTICS, "moving_stddev", "renorm_mean", "renorm_stddev")
        if getattr(layer, name, None) is not None
    }
    return [
        w
        for w in model.weights
        if id(w) not in statistics and np.issubdtype(np.dtype(w.dtype), np.floating)
    ]


class WeightAverage(tf.Module):
    """The equal running average of some model variables, checkpointable.

    Holds one float32 variable per model variable plus an int64 `count`. Create it inside
    the strategy's scope: under MirroredStrategy each average is then a mirrored variable,
    one identical copy per replica (updates run in cross-replica context and write every
    copy). Save it with the run's `tf.train.Checkpoint(..., weight_average=average)`: a
    restored average continues exactly where it stopped.

    `update()` reads the model variables and does (Izmailov et al. 2018, Algorithm 1)

        average <- average + (w - average) / (count + 1);  count <- count + 1

    in float32 whatever the variables' dtype (mixed precision keeps float32 variables, but a
    float16 or bfloat16 variable is averaged in float32 too). The first update copies w.

    Compared with `torch.optim.swa_utils.AveragedModel`: that wraps a deep copy of the whole
    module (buffers included, BN statistics copied unless `use_buffers=True` averages them)
    and keeps `n_averaged`; its default `avg_fn` is the same equal running average, and
    `get_ema_avg_fn` / `multi_avg_fn` give other averages. Here only the given variables are
    averaged (no second model is built: `copy_to` writes the average into any model of the
    same architecture, e.g. the one exported), BN statistics are never averaged
    (`update_bn` recomputes them, as `torch.optim.swa_utils.update_bn` does), and the
    average is a checkpointable part of the run's state.

    Args:
        model_variables: The variables to average, e.g. `averaged_weights(model)`.
        name: The module name.

    Raises:
        ValueError: No variables, or a variable that is not floating point.
    """

    def __init__(self, model_variables, name: str = "weight_average"):
        super().__init__(name=name)
        variables = list(model_variables)
        if not variables:
            raise ValueError("WeightAverage needs at least one variable; received none")
        for v in variables:
            if not np.issubdtype(np.dtype(_dtype_name(v)), np.floating):
                raise ValueError(
                    f"WeightAverage averages floating-point variables; received "
                    f"{_path(v)} of dtype {_dtype_name(v)}"
                )
        # Not tracked: the model's variables belong to the model's checkpoint, not to ours.
        self._sources = _Untracked(variables)
        self.averages = [
            tf.Variable(
                tf.zeros(v.shape, tf.float32),
                trainable=False,
                name=_variable_name(v),
            )
            for v in variables
        ]
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="count")
        # One compiled update per instance (a tf.function on the class would count every
        # instance's trace as a retrace).
        self._compiled = _Untracked([tf.function(self._update), tf.function(self._swap)])

    @property
    def model_variables(self) -> list:
        """The variables whose average this holds (in the order given)."""
        return list(self._sources.items)

    @property
    def num_averaged(self) -> int:
        """How many updates the average holds."""
        return int(self.count.numpy())

    def update(self) -> None:
        """Adds the model variables' current values to the average (cross-replica context)."""
        _check_cross_replica("WeightAverage.update")
        self._compiled.items[0]()

    def _update(self):
        k = tf.cast(self.count + 1, tf.float32)
        for average, v in zip(self.averages, self._sources.items):
            average.assign_add((tf.cast(_read(v), tf.float32) - average) / k)
        self.count.assign_add(1)

    def reset(self) -> None:
        """Forgets every update (count 0, averages 0)."""
        for average in self.averages:
            average.assign(tf.zeros_like(average))
        self.count.assign(0)

    def copy_to(self, variables) -> None:
        """Assigns the average to `variables`, cast to each one's dtype.

        Args:
            variables: One variable per averaged variable, in the same order and shapes:
                `averaged_weights(other_model)` of a model of the same architecture, or
                `model_variables` (`assign_to_model`).

        Raises:
            ValueError: Nothing was averaged yet, or the variables do not match.
        """
        _check_cross_replica("WeightAverage.copy_to")
        targets = self._matching(variables, "copy_to")
        self._copy(targets)

    def assign_to_model(self) -> None:
        """Assigns the average to the averaged variables themselves (the training model)."""
        self.copy_to(self._sources.items)

    def swap(self) -> None:
        """Exchanges the model variables' values and the average; a second call undoes it.

        For evaluating the averaged weights in the training model and then training on. Exact
        for float32 model variables (Keras mixed precision keeps those); a float16 variable
        rounds the average it receives and gives back. BatchNorm statistics are not part of
        the swap: `update_bn` for the averaged weights overwrites the training model's.

        Raises:
            ValueError: Nothing was averaged yet.
        """
        _check_cross_replica("WeightAverage.swap")
        self._require_updates("swap")
        self._compiled.items[1]()

    def _require_updates(self, what: str) -> None:
        if self.num_averaged == 0:
            raise ValueError(f"WeightAverage.{what}: nothing was averaged yet (count is 0)")

    def _matching(self, variables, what: str) -> list:
        self._require_updates(what)
        targets = list(variables)
        if len(targets) != len(self.averages):
            raise ValueError(
                f"WeightAverage.{what}: {len(self.averages)} averaged variables but "
                f"{len(targets)} targets"
            )
        for average, source, target in zip(self.averages, self._sources.items, targets):
            if tuple(target.shape) != tuple(average.shape):
                raise ValueError(
                    f"WeightAverage.{what}: {_path(target)} has shape {tuple(target.shape)}; "
                    f"the average of {_path(source)} has shape {tuple(average.shape)}"
                )
        return targets

    def _copy(self, targets):
        # Eager: called rarely, and any variables may be targets (no retrace per target set).
        for average, target in zip(self.averages, targets):
            target.assign(tf.cast(average, _dtype_name(target)))

    def _swap(self):
        for average, v in zip(self.averages, self._sources.items):
            current = tf.cast(_read(v), tf.float32)
            v.assign(tf.cast(average, _dtype_name(v)))
            average.assign(current)


class _Untracked:
    """Holds a list where `tf.Module` attribute tracking does not look."""

    def __init__(self, items):
        self.items = list(items)


def _read(v):
    return tf.convert_to_tensor(_tf_variable(v))


def _dtype_name(v) -> str:
    dtype = v.dtype
    return dtype if isinstance(dtype, str) else dtype.name


def _path(v) -> str:
    return getattr(v, "path", None) or v.name


def _variable_name(v) -> str:
    # Readable names in checkpoints' metadata and TensorBoard; the checkpoint key is the
    # position in `averages`.
    return "average/" + re.sub(r"[^A-Za-z0-9_./-]", "_", _path(v).split(":")[0])


def update_bn(model, dataset, strategy=None) -> int:
    """Recomputes every BatchNorm layer's statistics with one pass over `dataset`.

    Each layer's `moving_mean` / `moving_variance` becomes the equal-weight average, over the
    batches, of the statistics of that layer's input in a training-mode forward pass:

        moving_mean = (1/B) sum_b mean_b(x),   moving_variance = (1/B) sum_b var_b(x)

    with the mean and variance over every axis but the channel axis of batch b, as
    `torch.optim.swa_utils.update_bn` does (BN momentum=None: a cumulative average, every
    batch weighs the same, also a last smaller one). The variance is the *biased* batch
    variance, the one Keras' BatchNormalization normalizes with and averages into its moving
    variance; PyTorch's running_var averages the unbiased one (a factor n/(n-1), n = values
    per channel in a batch). Layers before a BN layer run in training mode too (their
    earlier BN layers normalize with batch statistics, dropout drops), as in PyTorch.

    How: every BN layer's statistics are reset (0 and 1) and its `momentum` set to 0 for the
    pass, so after a training-mode call its moving statistics are that batch's statistics;
    one compiled pass adds them up in float64 after each batch. Frozen BN layers
    (`trainable=False`, which Keras 3 runs in inference mode) are made trainable for the
    pass. Momentum, trainable flags and `synchronized` are restored afterwards, also on
    error (then the statistics are put back too). Only the BN statistics change: no
    gradient, no optimizer step (a dropout layer's random seed state does advance).

    Under a strategy with several replicas each replica holds a share of every global batch.
    Keras' BN then assigns each replica's *own* batch statistics to its copy of the moving
    variables (they are mirrored variables without aggregation, so the copies drift apart
    and checkpoints keep replica 0's). For the pass every BN layer is therefore made
    `synchronized`: the per-replica sums of x and x^2 and the counts are all-reduced and
    every replica normalizes with, and records, the global batch's mean and variance (as
    E[x^2] - E[x]^2, Keras' synchronized formula). The result equals one device's over the
    same global batches, up to float32 round-off, and all replicas' copies are equal.

    Args:
        model: A built Keras model (outputs anything).
        dataset: Finite; yields batches of inputs or (inputs, labels, ...) tuples: a
            `tf.data.Dataset` of global batches (distributed here with DATA sharding) or a
            dataset already distributed by `strategy`. For an endless stream pass
            `dataset.take(n)`.
        strategy: The strategy `model` was built under; default `tf.distribute.get_strategy()`.

    Returns:
        The number of batches used; 0 (and no pass) when the model has no BN layer.

    Raises:
        ValueError: A BN layer uses renorm, the dataset is infinite, or it yields no batch.
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    for layer in layers:
        if layer.renorm:
            raise ValueError(f"update_bn: layer {layer.name!r} uses renorm, which is not supported")
    strategy = strategy or tf.distribute.get_strategy()
    if isinstance(dataset, tf.data.Dataset):
        if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError("update_bn needs a finite dataset; received an infinite one")
        dataset = distribute_dataset(strategy, dataset)
    saved = [(layer.momentum, layer.trainable, layer.synchronized) for layer in layers]
    before = [[getattr(layer, n).numpy() for n in _BN_STATISTICS] for layer in layers]
    try:
        for layer in layers:
            # Fresh statistics (as PyTorch's reset_running_stats): 0 * NaN would keep a NaN.
            layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
            layer.moving_variance.assign(tf.ones_like(layer.moving_variance))
            layer.momentum = 0.0
            if not layer.trainable:
                layer.trainable = True
            if strategy.num_replicas_in_sync > 1:
                layer.synchronized = True
        sums, batches = _statistics_pass(strategy, model, layers)(pass_iterator(dataset))
        batches = int(batches)
        faults.point("swa_bn")  # crash tests: a kill during the BN pass of an averaged model
        if batches == 0:
            raise ValueError("update_bn: the dataset yielded no batch")
        for layer, layer_sums in zip(layers, _pairs(sums)):
            for name, total in zip(_BN_STATISTICS, layer_sums):
                variable = getattr(layer, name)
                variable.assign(tf.cast(total / batches, _dtype_name(variable)))
    except BaseException:
        for layer, values in zip(layers, before):
            for name, value in zip(_BN_STATISTICS, values):
                getattr(layer, name).assign(value)
        raise
    finally:
        for layer, (momentum, trainable, synchronized) in zip(layers, saved):
            layer.momentum = momentum
            if layer.trainable != trainable:
                layer.trainable = trainable
            layer.synchronized = synchronized
    return batches


def _pairs(flat):
    return [flat[i : i + 2] for i in range(0, len(flat), 2)]


def _statistics_pass(strategy, model, layers):
    """A compiled pass: forward every batch in training mode, add up the BN statistics."""
    statistics = [getattr(layer, n) for layer in layers for n in _BN_STATISTICS]

    def forward(batch):
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        model(inputs, training=True)

    def run(iterator):
        # Tuples: autograph would stack a list of loop tensors into one tensor.
        sums = tuple(tf.zeros(v.shape, tf.float64) for v in statistics)
        batches = tf.constant(0, tf.int64)
        for batch in iterator:
            strategy.run(forward, args=(batch,))
            # Cross-replica reads see replica 0's copy; with momentum 0 (and synchronized
            # statistics under several replicas) it holds this global batch's statistics.
            sums = tuple(s + tf.cast(_read(v), tf.float64) for s, v in zip(sums, statistics))
            batches += 1
        return sums, batches

    return tf.function(run)
