"""The segmented optimizer behind differential learning rates.

Optimizers by name, the multipliers of a spread and the slot reset are in
`trainer.lr.factory`; Auto-RGN's math in `trainer.lr.rgn`.

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

import schedules
from trainer.errors import UserError
from trainer.lr import keras_private, rgn
from trainer.lr.factory import (  # noqa: F401  (trainer.optimizers' public names)
    _MAKE_CLASSES,
    OPTIMIZERS,
    make,
    mults_from_spread,
    reset_slots,
)

_PACKAGE = "lrtech"


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
        rgn.check(adaptive, adaptive_floor, adaptive_granularity)
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
            rgn.build(table, variables)
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
            self._segments.adaptive_mults.assign(
                rgn.multipliers(self._segments, grads_and_vars, self)
            )
        return grads_and_vars

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
        if self._segments.adaptive is None:
            raise UserError(f"adaptive_multipliers: optimizer {self.name!r} has adaptive=None")
        return rgn.segment_means(self._segments)

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


def adaptive_args(config) -> dict:
    """`segmented`'s Auto-RGN arguments from a run's --adaptive_lr* flags."""
    if config.adaptive_lr == "none":
        return {}
    return dict(
        adaptive=config.adaptive_lr,
        adaptive_floor=float(config.adaptive_lr_floor),
        adaptive_granularity=config.adaptive_lr_granularity,
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
    rgn.check(adaptive, adaptive_floor, adaptive_granularity)
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


# Registered at import, so `keras.saving.load_model` finds them in any process that imported
# this module, whichever of them was saved; the schedules they may hold too.
for _base in _MAKE_CLASSES:
    _segmented_class(_base)
schedules.register()
