"""Optimizers by name, and the segmented optimizer behind differential learning rates.

`segmented(optimizer, segment_of, lr_mults)` returns an optimizer of a subclass of
`type(optimizer)` (same config, one `iterations` counter, the schedule evaluated once per
step) whose update of variable v uses `lr_mults[segment_of[v.path]] * learning_rate`:

* It scales the learning rate passed to `update_step`, never the gradient. The two agree only
  for SGD / momentum SGD without weight decay or clipping; Adam, AdamW, RMSprop, Nadam and
  Adagrad are (nearly) invariant to the gradient's scale, so a 0.1 gradient factor would give
  an update about 10x too large.
* Decoupled weight decay (`weight_decay=`, all Keras 3 optimizers) is scaled by the segment's
  learning rate too, as PyTorch parameter groups and fastai do.
* The multiplier table is a Python list read while tracing: no per-step Python work.
* Momentum cycling (`cycle_momentum=True`, fastai's one-cycle `moms`): the learning-rate
  schedule's `momentum(step)` (e.g. `schedules.OneCycle`) replaces SGD's `momentum` or the
  Adam family's `beta_1` at every step, in the compiled step. Adam's bias correction then uses
  the current beta_1 (`1 - beta_1(t)**t`), as PyTorch's and fastai's Adam do.
* Auto-RGN (`adaptive="rgn"`; Lee et al., "Surgical Fine-Tuning Improves Adaptation to
  Distribution Shifts", ICLR 2023): at every step each updated variable i (or layer) gets
  `m_i = max(floor, RGN_i / max_j RGN_j)`, `RGN_i = ||g_i|| / (||w_i|| + eps)`, and moves at
  `m_i * lr_mults[segment] * learning_rate`. Computed in the compiled step from the gradients
  the update uses (after Keras' clipping and cross-replica sum), with one norm of each
  gradient and weight; stateless: nothing is checkpointed (see `segmented`).
* The segmented classes are registered with Keras (``lrtech>SegmentedAdam`` ...), so a
  `model.fit` user can `model.save("m.keras")` and `keras.saving.load_model("m.keras")` with
  the optimizer and its state, once `trainer.lr.optimizers` is imported.

Private Keras attributes used here are listed, and reached, through `trainer.lr.keras_private`.

Usage (in a custom loop under a tf.distribute strategy):

    with strategy.scope():
        opt = segmented(make("adam", SGDR(1e-3, 1000)), segment_of, (0.01, 0.1, 1.0))
        opt.build(all_variables_that_may_ever_train)  # before the first trace
"""

from __future__ import annotations

import collections.abc
import math
import numbers

import keras
import tensorflow as tf

from trainer.errors import UserError
from trainer.lr import keras_private

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "nadam")

# The Keras classes `make` returns; their segmented subclasses are registered at import.
_MAKE_CLASSES = (
    keras.optimizers.SGD,
    keras.optimizers.RMSprop,
    keras.optimizers.Adam,
    keras.optimizers.AdamW,
    keras.optimizers.Adagrad,
    keras.optimizers.Nadam,
)
_PACKAGE = "lrtech"

ADAPTIVE = ("rgn",)
GRANULARITIES = ("tensor", "layer")
# Guards RGN's division for an all-zero weight (a fresh bias). Such a variable's RGN is
# ||g|| / eps, far above every other: see `segmented` on zero-initialized variables.
RGN_EPSILON = 1e-12


def make(name, learning_rate, *, momentum=0.9, weight_decay=None, clipnorm=None, **kw):
    """Creates a Keras optimizer by name.

    Args:
        name: One of `OPTIMIZERS`. "momentum" and "nesterov" are SGD with momentum.
        learning_rate: A float or a `LearningRateSchedule` (e.g. `schedules.SGDR`).
        momentum: Momentum for "momentum", "nesterov" and "rmsprop" (ignored by the others).
        weight_decay: Decoupled weight decay per unit learning rate, for every optimizer.
            None keeps the Keras default of the class (AdamW: 0.004, the others: none).
        clipnorm: Clip the global norm of all gradients passed to one `apply` to this value
            (Keras' `global_clipnorm`). Under a multi-replica strategy this sees the summed
            gradient only with `segmented(..., aggregate_gradients=False)`.
        **kw: Further arguments of the Keras class (e.g. `beta_1`, `epsilon`).

    Returns:
        A new, unbuilt `keras.optimizers.Optimizer`. Create it inside `strategy.scope()`.

    Raises:
        UserError: Unknown name, or a negative / non-finite number.
    """
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer: unknown name {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
        learning_rate = float(learning_rate)
    if not 0 <= momentum < 1:
        raise UserError(f"momentum={momentum!r} must be in [0, 1)")
    if weight_decay is not None and not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise UserError(f"weight_decay={weight_decay!r} must be a finite number >= 0")
    if clipnorm is not None and not (math.isfinite(clipnorm) and clipnorm > 0):
        raise UserError(f"clipnorm={clipnorm!r} must be a finite number > 0")
    if weight_decay is not None:
        # 0 switches decay off; Keras would still add a multiply-by-zero per variable.
        kw["weight_decay"] = weight_decay if (weight_decay or name == "adamw") else None
    if clipnorm is not None:
        kw["global_clipnorm"] = clipnorm
    opt = keras.optimizers
    if name in ("sgd", "momentum", "nesterov"):
        m = 0.0 if name == "sgd" else momentum
        return opt.SGD(learning_rate, momentum=m, nesterov=name == "nesterov", **kw)
    if name == "rmsprop":
        return opt.RMSprop(learning_rate, momentum=momentum, **kw)
    cls = {"adam": opt.Adam, "adamw": opt.AdamW, "adagrad": opt.Adagrad, "nadam": opt.Nadam}
    return cls[name](learning_rate, **kw)


def mults_from_spread(num_segments: int, spread: float) -> tuple[float, ...]:
    """Geometric multipliers from 1/spread (first segment) to 1 (last), like fastai's slice.

    Args:
        num_segments: Number of segments (>= 1).
        spread: Ratio of the last segment's learning rate to the first's (>= 1).

    Returns:
        A tuple of `num_segments` floats; `(1.0,)` for one segment.

    Raises:
        UserError: num_segments < 1, or spread < 1 or not finite.
    """
    if isinstance(num_segments, bool) or not isinstance(num_segments, int) or num_segments < 1:
        raise UserError(f"number of segments {num_segments!r} must be an integer >= 1")
    if not (isinstance(spread, numbers.Real) and math.isfinite(spread) and spread >= 1):
        raise UserError(f"lr_spread={spread!r} must be a finite number >= 1")
    if num_segments == 1:
        return (1.0,)
    last = num_segments - 1
    return tuple(float(spread) ** ((i - last) / last) for i in range(num_segments))


class _SegmentTable:
    """Plain holder so Keras / TF tracking does not wrap the dicts into trackables."""

    def __init__(
        self,
        segment_of,
        lr_mults,
        aggregate_gradients,
        cycle_momentum=False,
        adaptive=None,
        adaptive_floor=0.0,
        adaptive_granularity="tensor",
    ):
        self.segment_of = dict(segment_of)
        self.lr_mults = tuple(float(m) for m in lr_mults)
        self.aggregate_gradients = bool(aggregate_gradients)
        self.cycle_momentum = bool(cycle_momentum)
        self.adaptive = adaptive
        self.adaptive_floor = float(adaptive_floor)
        self.adaptive_granularity = adaptive_granularity
        self.mults = []  # multiplier of the i-th variable the optimizer was built with
        self.segments = []  # segment of the i-th built variable
        self.groups = []  # Auto-RGN group (variable or layer) of the i-th built variable
        # Auto-RGN: m_i of the i-th built variable at the last step (NaN if not updated). A
        # plain attribute of this holder, so neither tf.train.Checkpoint nor Keras saving
        # sees it: written before it is read in every step, it is not state.
        self.adaptive_mults = None
        self._by_scope = {}  # path -> segment, for paths found by `_match_scopes`

    def segment(self, path: str) -> int | None:
        """The segment of the variable at `path`, or None if it is in no segment."""
        if path in self.segment_of:
            return self.segment_of[path]
        if path not in self._by_scope:
            self._by_scope[path] = self._match_scopes(path)
        return self._by_scope[path]

    def _match_scopes(self, path: str) -> int | None:
        # A variable's path may gain or lose leading name scopes with the building context:
        # a Sequential model given an Input builds under its own name ("net/dense/kernel"),
        # the same model rebuilt by keras.saving.load_model does not ("dense/kernel").
        found = {
            key: segment
            for key, segment in self.segment_of.items()
            if key.endswith("/" + path) or path.endswith("/" + key)
        }
        if len(set(found.values())) > 1:
            raise UserError(
                f"segmented optimizer: variable {path} matches {sorted(found)} in different"
                " segments; give segment_of the variables' exact paths"
            )
        return next(iter(found.values()), None)


class _SegmentedMixin:
    """Per-segment learning rates for any Keras optimizer class (TensorFlow backend)."""

    def __init__(
        self,
        *args,
        segment_of,
        lr_mults,
        aggregate_gradients=True,
        cycle_momentum=False,
        adaptive=None,
        adaptive_floor=0.0,
        adaptive_granularity="tensor",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        _check_mults(segment_of, lr_mults)
        _check_adaptive(adaptive, adaptive_floor, adaptive_granularity)
        self._segments = _SegmentTable(
            segment_of,
            lr_mults,
            aggregate_gradients,
            cycle_momentum,
            adaptive,
            adaptive_floor,
            adaptive_granularity,
        )
        if cycle_momentum:
            _check_cycle_momentum(self)

    def _check_known(self, variables):
        for v in variables:
            if self._segments.segment(v.path) is None:
                raise UserError(f"segmented optimizer: variable {v.path} is in no segment")

    def build(self, variables):
        self._check_known(variables)
        table = self._segments
        # Aligned with Keras' own variable index (the order of `variables`).
        table.segments = [table.segment(v.path) for v in variables]
        table.mults = [table.lr_mults[s] for s in table.segments]
        if table.adaptive is not None:
            _build_adaptive(table, variables)
        super().build(variables)

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
            self._check_known(trainable_variables)
        return super().apply(grads, trainable_variables)

    def update_step(self, gradient, variable, learning_rate):
        index = keras_private.variable_index(self, variable)
        mult = self._segments.mults[index]
        if mult != 1.0:
            learning_rate = learning_rate * mult
        if self._segments.adaptive is not None:
            # This step's m_i, written by `_all_reduce_sum_gradients` earlier in the step;
            # under a strategy, read from this device's copy.
            learning_rate = learning_rate * self._segments.adaptive_mults[index]
        if self.weight_decay is not None and keras_private.uses_weight_decay(self, variable):
            # Keras' decoupled decay (`variable * wd * lr`, before the update), at the
            # segment's learning rate. Here Keras already runs once per variable, in the
            # replica context that may update it.
            lr = tf.cast(learning_rate, variable.dtype)
            self.assign_sub(variable, variable * tf.cast(self.weight_decay, variable.dtype) * lr)
        if self._segments.cycle_momentum:
            return self._cycled_update_step(gradient, variable, learning_rate)
        return super().update_step(gradient, variable, learning_rate)

    def _cycled_update_step(self, gradient, variable, learning_rate):
        schedule = keras_private.learning_rate_object(self)
        momentum = schedule.momentum(self.iterations)
        if _momentum_attr(self) == "momentum":
            # Keras' SGD branches on `self.momentum != 0` in Python, so a tensor cannot stand
            # in for it; this is its momentum update with the step's momentum.
            lr = tf.cast(learning_rate, variable.dtype)
            g = tf.cast(gradient, variable.dtype)
            mom = tf.cast(momentum, variable.dtype)
            m = self.momentums[keras_private.variable_index(self, variable)]
            self.assign(m, m * mom - g * lr)
            self.assign_add(variable, m * mom - g * lr if self.nesterov else m)
            return None
        # Adam / AdamW read `self.beta_1` only arithmetically: the step's value stands in
        # for the duration of this call (one variable, no merge_call in between).
        constant = self.beta_1
        self.beta_1 = momentum
        try:
            return super().update_step(gradient, variable, learning_rate)
        finally:
            self.beta_1 = constant

    def _apply_weight_decay(self, variables):
        # Keras' hook decays every variable at the global learning rate; update_step does it
        # per segment instead.
        del variables

    def _all_reduce_sum_gradients(self, grads_and_vars):
        # Keras calls this in replica context, after clipping and before update_step: the
        # gradients it returns are exactly those the variables move with.
        if self._segments.aggregate_gradients:
            grads_and_vars = super()._all_reduce_sum_gradients(grads_and_vars)
        else:
            grads_and_vars = list(grads_and_vars)  # the caller has summed them already
        if self._segments.adaptive is not None:
            # ONLY_FIRST_REPLICA: replica 0's values (all replicas hold the same summed
            # gradients and weights) reach every device's copy before update_step reads it.
            self._segments.adaptive_mults.assign(self._rgn_multipliers(grads_and_vars))
        return grads_and_vars

    def _rgn_multipliers(self, grads_and_vars):
        """m_i of every built variable (NaN for those without a gradient in this step)."""
        table = self._segments
        indices, grad_sq, weight_sq = [], [], []
        for grad, variable in grads_and_vars:
            if grad is None:
                continue
            indices.append(keras_private.variable_index(self, variable))
            grad_sq.append(_squared_norm(grad))
            weight_sq.append(_squared_norm(variable))
        # Groups among this step's variables, numbered 0..k-1 in order of first appearance.
        local = {}
        group_ids = [local.setdefault(table.groups[i], len(local)) for i in indices]
        grad_sq, weight_sq = tf.stack(grad_sq), tf.stack(weight_sq)
        if len(local) < len(indices):  # "layer": norms over all of the layer's variables
            grad_sq = tf.math.unsorted_segment_sum(grad_sq, group_ids, len(local))
            weight_sq = tf.math.unsorted_segment_sum(weight_sq, group_ids, len(local))
        rgn = tf.sqrt(grad_sq) / (tf.sqrt(weight_sq) + RGN_EPSILON)
        top = tf.reduce_max(rgn)
        mults = tf.maximum(tf.constant(table.adaptive_floor, tf.float32), rgn / top)
        # All gradients zero: no variable stands out, so none is slowed down.
        mults = tf.where(top > 0, mults, tf.ones_like(mults))
        if len(local) < len(indices):
            mults = tf.gather(mults, group_ids)
        unset = tf.fill([len(table.mults)], tf.constant(math.nan, tf.float32))
        return tf.tensor_scatter_nd_update(unset, [[i] for i in indices], mults)

    def adaptive_multipliers(self) -> list[float]:
        """Auto-RGN's multiplier of each segment at the last step (call it eagerly).

        The mean of m_i over the segment's variables updated in the last step, without the
        static `lr_mults`; 0.0 for a segment none of whose variables was updated (frozen),
        and for every segment before the first step (also the first step after a restore:
        the multipliers are not checkpointed). Wrapped in a `LossScaleOptimizer`:
        `optimizer.inner_optimizer.adaptive_multipliers()`.

        Raises:
            UserError: The optimizer was made without `adaptive`.
        """
        table = self._segments
        if table.adaptive is None:
            raise UserError(f"adaptive_multipliers: optimizer {self.name!r} has adaptive=None")
        sums, counts = [0.0] * len(table.lr_mults), [0] * len(table.lr_mults)
        if table.adaptive_mults is not None:
            for segment, m in zip(table.segments, table.adaptive_mults.numpy().tolist()):
                if not math.isnan(m):
                    sums[segment] += m
                    counts[segment] += 1
        return [total / count if count else 0.0 for total, count in zip(sums, counts)]

    def get_config(self):
        config = super().get_config()
        config["segment_of"] = dict(self._segments.segment_of)
        config["lr_mults"] = list(self._segments.lr_mults)
        config["aggregate_gradients"] = self._segments.aggregate_gradients
        config["cycle_momentum"] = self._segments.cycle_momentum
        config["adaptive"] = self._segments.adaptive
        config["adaptive_floor"] = self._segments.adaptive_floor
        config["adaptive_granularity"] = self._segments.adaptive_granularity
        return config


def _squared_norm(x):
    """Sum of squares in float32; an IndexedSlices gradient's duplicate indices summed first."""
    if isinstance(x, tf.IndexedSlices):
        unique, position = tf.unique(x.indices)
        x = tf.math.unsorted_segment_sum(x.values, position, tf.size(unique))
    return tf.reduce_sum(tf.square(tf.cast(x, tf.float32)))


def _layer_of(path: str) -> str:
    """The layer part of a Keras variable path ("net/dense/kernel" -> "net/dense")."""
    return path.rsplit("/", 1)[0]


def _build_adaptive(table, variables):
    if table.adaptive_granularity == "layer":
        layers = {}
        table.groups = [layers.setdefault(_layer_of(v.path), len(layers)) for v in variables]
    else:
        table.groups = list(range(len(variables)))
    # Lifted out of any tf.function (Keras may build inside the first traced step); under
    # a strategy's scope it is mirrored. ONLY_FIRST_REPLICA allows the write in replica
    # context.
    with tf.init_scope():
        table.adaptive_mults = tf.Variable(
            tf.fill([len(variables)], math.nan),
            trainable=False,
            name="adaptive_multipliers",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )


# The hyperparameter momentum cycling replaces, by Keras class (the segmented class's base).
_MOMENTUM_ATTR = {
    keras.optimizers.SGD: "momentum",
    keras.optimizers.Adam: "beta_1",
    keras.optimizers.AdamW: "beta_1",
}


def _momentum_attr(optimizer) -> str | None:
    for cls in type(optimizer).__mro__:
        if cls in _MOMENTUM_ATTR:
            return _MOMENTUM_ATTR[cls]
    return None


def supports_cycle_momentum(optimizer) -> bool:
    """Whether momentum cycling applies to `optimizer` (momentum SGD, Adam, AdamW)."""
    attr = _momentum_attr(optimizer)
    return attr == "beta_1" or (attr == "momentum" and optimizer.momentum != 0)


def _check_cycle_momentum(optimizer):
    if not supports_cycle_momentum(optimizer):
        raise UserError(
            f"cycle_momentum: {optimizer.name} ({type(optimizer).__name__}) has no momentum to"
            " cycle; use momentum / nesterov SGD, Adam or AdamW"
        )
    schedule = keras_private.learning_rate_object(optimizer)
    if not callable(getattr(schedule, "momentum", None)):
        raise UserError(
            f"cycle_momentum: the learning-rate schedule {type(schedule).__name__} has no"
            " momentum(step); use schedules.OneCycle (or Phases of them)"
        )


_CLASSES: dict[type, type] = {}


def _registered_name(base: type) -> str:
    name = f"Segmented{base.__name__}"
    if keras.saving.get_registered_object(f"{_PACKAGE}>{name}") is not None:
        # Another class of this __name__ (a user's own Adam) came first: qualify ours. The
        # Keras classes of `make` are registered at import, so theirs never change.
        name = f"{base.__module__}.Segmented{base.__qualname__}"
    return name


def _segmented_class(base: type) -> type:
    """The segmented subclass of `base`, created and registered with Keras once."""
    if base not in _CLASSES:
        keras_private.check_hooks(base)
        name = f"Segmented{base.__name__}"
        cls = type(name, (_SegmentedMixin, base), {"__module__": __name__, "__qualname__": name})
        register = keras.saving.register_keras_serializable(
            package=_PACKAGE, name=_registered_name(base)
        )
        _CLASSES[base] = register(cls)
    return _CLASSES[base]


def _check_adaptive(adaptive, floor, granularity):
    # One line each, worded like Keras' own argument checks.
    if adaptive is not None and adaptive not in ADAPTIVE:
        choices = " or ".join(["None", *map(repr, ADAPTIVE)])
        raise UserError(f"Argument `adaptive` must be {choices}. Received: adaptive={adaptive!r}")
    if (
        isinstance(floor, bool)
        or not isinstance(floor, numbers.Real)
        or not (math.isfinite(floor) and 0 <= floor <= 1)
    ):
        raise UserError(
            f"Argument `adaptive_floor` must be in [0, 1]. Received: adaptive_floor={floor!r}"
        )
    if granularity not in GRANULARITIES:
        raise UserError(
            f"Argument `adaptive_granularity` must be {' or '.join(map(repr, GRANULARITIES))}. "
            f"Received: adaptive_granularity={granularity!r}"
        )


def _check_mults(segment_of, lr_mults):
    if isinstance(lr_mults, (str, bytes)) or not isinstance(lr_mults, collections.abc.Sequence):
        raise UserError(f"lr_mults={lr_mults!r} must be a sequence of numbers")
    for m in lr_mults:
        if (
            isinstance(m, bool)
            or not isinstance(m, numbers.Real)
            or not (math.isfinite(m) and m > 0)
        ):
            raise UserError(f"lr_mults: {m!r} in {list(lr_mults)} must be a finite number > 0")
    used = set(segment_of.values())
    if not used:
        raise UserError("segment_of is empty: no variable to train")
    if any(not isinstance(s, int) or s < 0 for s in used):
        raise UserError(f"segment_of: segments must be integers >= 0, got {sorted(used)}")
    if len(lr_mults) != max(used) + 1:
        raise UserError(
            f"lr_mults: {len(lr_mults)} multipliers {list(lr_mults)} for"
            f" {max(used) + 1} segments (0..{max(used)})"
        )


def segmented(
    optimizer,
    segment_of,
    lr_mults,
    *,
    aggregate_gradients=True,
    cycle_momentum=False,
    adaptive=None,
    adaptive_floor=0.0,
    adaptive_granularity="tensor",
):
    """Returns an optimizer like `optimizer` with a learning-rate multiplier per segment.

    Variable v moves exactly as `type(optimizer)` would move it at learning rate
    `lr_mults[segment_of[v.path]] * learning_rate(step)`, decoupled weight decay included;
    with `adaptive="rgn"` at `m_v * lr_mults[...] * learning_rate(step)` (below).
    The result is a fresh optimizer of a subclass of `type(optimizer)`, with the same config
    (the schedule object itself is shared, not re-serialized); `optimizer` is not used again.

    Build it with *every* variable that may ever be trained, inside `strategy.scope()` and
    before the first trace (`opt.build(variables)`); `apply` may then get any subset of them,
    e.g. while segments are frozen. It can be wrapped in `keras.optimizers.LossScaleOptimizer`.

    Args:
        optimizer: An unbuilt Keras optimizer, e.g. from `make`.
        segment_of: `{variable.path: segment}`, e.g. from `trainer.lr.segments.assign`. A
            variable whose path is not a key takes the segment of the one key that equals
            its path up to leading name scopes ("net/dense/kernel" for "dense/kernel"), as
            after `keras.saving.load_model` rebuilds a Sequential model.
        lr_mults: One finite multiplier > 0 per segment.
        aggregate_gradients: False when the caller already summed the gradients across
            replicas (e.g. to clip the global gradient or check it is finite): the optimizer
            then does not all-reduce them again.
        cycle_momentum: Replace SGD's momentum (momentum / nesterov) or Adam's / AdamW's
            beta_1 at every step by the schedule's `momentum(step)` (fastai's one-cycle
            momentum, e.g. 0.95 -> 0.85 -> 0.95 against the learning rate).
        adaptive: None, or "rgn" for Auto-RGN (Lee et al., Surgical Fine-Tuning, ICLR 2023):
            at every step, each variable i that `apply` updates gets the multiplier
            `m_i = max(adaptive_floor, RGN_i / max_j RGN_j)` with
            `RGN_i = ||g_i||_2 / (||w_i||_2 + RGN_EPSILON)`, from the gradient it is updated
            with (after Keras' clipping and cross-replica sum, or as given with
            `aggregate_gradients=False`) and its weights before the step. The variable with
            the largest RGN moves at its full segment rate; a single group always has m = 1
            (exactly the non-adaptive optimizer). m is unchanged by a common factor on every
            gradient (loss scale, global-norm clipping, sum vs mean over replicas). If every
            gradient is zero, m = 1. An all-zero weight (a fresh bias) has RGN = ||g|| / eps:
            it leads and every other variable runs at the floor until it has grown; a floor
            bounds that slow-down, `adaptive_granularity="layer"` avoids it (the layer's
            norm includes its kernel). Costs two squared norms per variable (gradient,
            weight) and one small write per step; nothing is checkpointed, so resume stays
            exact. `adaptive_multipliers()` reports the last step's per-segment means.
        adaptive_floor: Lower bound of m_i, in [0, 1] (1 switches adaptation off).
        adaptive_granularity: "tensor" (one RGN per variable, the paper's) or "layer" (one
            per layer: the norms over all the layer's variables in this step, a layer being
            a variable path without its last component).

    Returns:
        The segmented optimizer, of a class registered with Keras as
        ``lrtech>Segmented{type(optimizer).__name__}``. `get_config()` includes `segment_of`,
        `lr_mults`, `aggregate_gradients`, `cycle_momentum` and the `adaptive*` arguments, so
        a model compiled with it saves and loads (`model.save`, `keras.saving.load_model`)
        with its optimizer state.

    Raises:
        UserError: Bad multipliers or adaptive arguments, a built or loss-scale optimizer,
            momentum cycling for an optimizer or schedule without momentum, or (at build /
            apply) a variable missing from `segment_of`.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise UserError("segmented: wrap the segmented optimizer in LossScaleOptimizer instead")
    if optimizer.built:
        raise UserError(
            f"segmented: optimizer {optimizer.name!r} is built; its state would be lost"
        )
    _check_mults(segment_of, lr_mults)
    _check_adaptive(adaptive, adaptive_floor, adaptive_granularity)
    config = optimizer.get_config()
    # Reuse the schedule object instead of a serialization round trip (custom schedules need
    # not be registered serializable).
    schedule = keras_private.learning_rate_object(optimizer)
    if schedule is not None:
        config["learning_rate"] = schedule
    new = _segmented_class(type(optimizer))(
        **config,
        segment_of=segment_of,
        lr_mults=lr_mults,
        aggregate_gradients=aggregate_gradients,
        cycle_momentum=cycle_momentum,
        adaptive=adaptive,
        adaptive_floor=adaptive_floor,
        adaptive_granularity=adaptive_granularity,
    )
    keras_private.copy_weight_decay_exclusions(optimizer, new)
    return new


def reset_slots(optimizer, variables) -> int:
    """Restarts the optimizer state (momentums, velocities, ...) of `variables`.

    For gradual unfreezing: a segment that was frozen starts with clean state when it starts
    to train. Keras optimizers keep each kind of state as a list aligned with the variables
    they were built with (`_momentums[i]` belongs to variable i); every such list of the
    optimizer's own variables is found and entry i is set to its initial value (zero; Adagrad
    / Ftrl accumulators: `initial_accumulator_value`). State shared by all variables (the step
    counter used for Adam's bias correction, Nadam's momentum-schedule product) is unchanged.
    Call it outside the compiled step (eagerly, in the driver).

    Args:
        optimizer: A built optimizer (a `LossScaleOptimizer` is looked through).
        variables: Model variables the optimizer was built with.

    Returns:
        The number of slot variables reset.

    Raises:
        UserError: The optimizer is not built, or was not built with one of the variables.
    """
    opt = getattr(optimizer, "inner_optimizer", optimizer)
    if not opt.built:
        raise UserError(f"reset_slots: optimizer {opt.name!r} is not built")
    indices = []
    for v in variables:
        try:
            indices.append(keras_private.variable_index(opt, v))
        except KeyError:
            raise UserError(
                f"reset_slots: optimizer was not built with variable {v.path}"
            ) from None
    count = 0
    for attr, slots in keras_private.slot_lists(opt):
        value = keras_private.slot_initial_value(opt, attr)
        for i in indices:
            if slots[i] is not None:
                slots[i].assign(tf.fill(slots[i].shape, tf.cast(value, slots[i].dtype)))
                count += 1
    return count


# Registered at import, so `keras.saving.load_model` finds them in any process that imported
# this module, whichever of them was saved.
for _base in _MAKE_CLASSES:
    _segmented_class(_base)
