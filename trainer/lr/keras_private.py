"""Every private Keras attribute lrtech relies on: one table, and the accessors that use them.

Keras 3 offers no public route for a few things the segmented optimizer, `reset_slots` and the
layer segments need. Each is a row of `PRIVATE`: its owner, what we use it for and why no
public API does it. Code elsewhere reaches them only through the helpers below, except the
two `HOOKS` that trainer/optimizers.py overrides by name (checked by `check_hooks` when a
segmented class is made), and models/transfer.py's one use (`models/` may not import
`trainer`; it is listed here too).
tests/test_keras_private.py checks every row against the installed Keras, so an upgrade that
drops one fails there, naming the attribute and the Keras version, instead of changing results
silently. The accessors raise the same kind of error at run time.

No longer used: `Optimizer._var_key` and `_trainable_variables_indices` (the one
`_get_variable_index` gives the position), `Layer._non_trainable_variables` (public
`layer.weights` minus the sublayers' weights), `Optimizer._distribution_strategy` and
`tf.__internal__.distribute.interim.maybe_merge_call` (weight decay now runs inside the public
`update_step`, which Keras already calls once per variable in the right replica context).
"""

from __future__ import annotations

import collections.abc
import dataclasses
from collections.abc import Iterator

import keras


@dataclasses.dataclass(frozen=True)
class PrivateUse:
    """One private Keras name we use.

    Attributes:
        name: The attribute, method or function.
        owner: Where Keras defines it.
        kind: "attribute" (read), "method" (called), "hook" (overridden by our subclass) or
            "function".
        used_by: Our module that uses it.
        used_for: What we use it for.
        why: Why no public API does it.
    """

    name: str
    owner: str
    kind: str
    used_by: str
    used_for: str
    why: str


_OPT = "keras.optimizers.Optimizer"
_OPTIMIZERS = "trainer.lr.optimizers"
_SEGMENTS = "trainer.lr.segments"

PRIVATE: tuple[PrivateUse, ...] = (
    PrivateUse(
        "_get_variable_index",
        _OPT,
        "method",
        _OPTIMIZERS,
        "position of a model variable among those the optimizer was built with: selects its"
        " learning-rate multiplier in update_step and its slots in reset_slots",
        "update_step receives only the variable (a per-replica tf.Variable under a strategy);"
        " Keras' own update_step methods find their slots the same way",
    ),
    PrivateUse(
        "_trainable_variables",
        _OPT,
        "attribute",
        _OPTIMIZERS + ", trainer.lr_find.callbacks",
        "the variables the optimizer was built with, to find the slot lists aligned with them"
        " (reset_slots; the LRFinder callback's fresh start)",
        "no public accessor; `optimizer.variables` lists the optimizer's own variables",
    ),
    PrivateUse(
        "_momentums, _velocities, _accumulators, ... (slot lists)",
        "keras.optimizers.SGD, Adam, AdamW, RMSprop, Adagrad, Nadam, ...",
        "attribute",
        _OPTIMIZERS,
        "reset_slots finds each kind of per-variable state as a list attribute aligned with"
        " `_trainable_variables` (entry i belongs to variable i) and resets entries (SGD"
        " names its list `momentums`)",
        "`optimizer.variables` is one flat list; which variable a slot belongs to is only a"
        " naming convention there",
    ),
    PrivateUse(
        "_accumulators",
        "keras.optimizers.Adagrad, Ftrl",
        "attribute",
        _OPTIMIZERS,
        "reset_slots restores these to `initial_accumulator_value`, not zero",
        "as for the slot lists",
    ),
    PrivateUse(
        "_model_variables_moving_average, _accumulated_gradients",
        _OPT,
        "attribute",
        _OPTIMIZERS,
        "per-variable lists that reset_slots must leave alone: EMA copies of the weights"
        " (use_ema) and gradient-accumulation buffers (gradient_accumulation_steps)",
        "as for the slot lists",
    ),
    PrivateUse(
        "_model_variables_moving_average",
        _OPT,
        "attribute",
        "trainer.averaging.weight_averaging",
        "Keras' EMA copies of the model variables (use_ema=True): started at the initial"
        " weights, then read to evaluate and export the EMA model",
        "no public accessor; finalize_variable_values() overwrites the model's own weights",
    ),
    PrivateUse(
        "_learning_rate",
        _OPT,
        "attribute",
        _OPTIMIZERS + ", trainer.lr_find.callbacks",
        "the schedule object, reused by segmented() instead of a serialization round trip,"
        " so custom schedules need not be registered; read by momentum cycling"
        " (schedule.momentum) and put back by the LRFinder callback",
        "`learning_rate` returns the current value; get_config() a serialized copy that only"
        " registered classes can rebuild",
    ),
    PrivateUse(
        "_exclude_from_weight_decay",
        _OPT,
        "attribute",
        _OPTIMIZERS,
        "copied by segmented(), so exclusions set with exclude_from_weight_decay(var_list=)"
        " on the given optimizer still apply",
        "exclude_from_weight_decay() sets it; there is no getter",
    ),
    PrivateUse(
        "_exclude_from_weight_decay_pattern",
        _OPT,
        "attribute",
        _OPTIMIZERS,
        "as above, for exclude_from_weight_decay(var_names=)",
        "exclude_from_weight_decay() sets it; there is no getter",
    ),
    PrivateUse(
        "_use_weight_decay",
        _OPT,
        "method",
        _OPTIMIZERS,
        "whether weight decay applies to a variable (the exclusions above), in the segmented"
        " optimizer's per-segment decay",
        "no public predicate; the exclusions it reads are private",
    ),
    PrivateUse(
        "_apply_weight_decay",
        _OPT,
        "hook",
        _OPTIMIZERS,
        "overridden as a no-op: the segmented optimizer decays each variable in update_step"
        " at its segment's learning rate",
        "Keras decays every variable at the global learning rate before update_step; no"
        " argument or public hook changes that",
    ),
    PrivateUse(
        "_all_reduce_sum_gradients",
        "keras.src.backend.tensorflow.optimizer.TFOptimizer",
        "hook",
        _OPTIMIZERS,
        "overridden to skip the cross-replica sum when the caller summed the gradients"
        " already (segmented(..., aggregate_gradients=False)), and to compute Auto-RGN's"
        " multipliers (adaptive='rgn') from the gradients it returns: clipped, summed,"
        " exactly those update_step applies",
        "Keras 3 has no argument for it (Keras 2's skip_gradients_aggregation is gone) and"
        " no public hook between the cross-replica sum and the per-variable update_step",
    ),
    PrivateUse(
        "_trainable_variables",
        "keras.layers.Layer",
        "attribute",
        _SEGMENTS,
        "the variables a layer created as trainable, also while it is frozen: what"
        " segments.assign maps to segments and the layer table counts",
        "trainable_weights is empty while the layer is frozen and includes its sublayers'",
    ),
    PrivateUse(
        "_layers",
        "keras.layers.Layer",
        "attribute",
        _SEGMENTS,
        "the tracked sublayers of a layer that is not a Model (e.g. a residual block), so"
        " split points can fall inside it",
        "Model.layers exists only on models; a Layer has no public list of its sublayers",
    ),
    PrivateUse(
        "to_snake_case",
        "keras.src.utils.naming",
        "function",
        "models.transfer",
        "the key of a layer's variables in Keras 3 weight files (snake-case class name,"
        " numbered per class), to transfer a backbone by layer",
        "not exported; it is how keras' saving_lib names layers in weight files",
    ),
)

# Hooks the segmented optimizer overrides. If Keras renamed one, our override would be dead
# code and the result silently wrong (e.g. weight decay at the global learning rate).
HOOKS = ("_apply_weight_decay", "_all_reduce_sum_gradients")
ADAGRAD_ACCUMULATORS = "_accumulators"
NOT_STATE = frozenset({"_model_variables_moving_average", "_accumulated_gradients"})


class KerasPrivateError(RuntimeError):
    """A private Keras attribute this project relies on is missing (a Keras upgrade)."""


def missing(owner: object, name: str) -> KerasPrivateError:
    """The error for a private name that `owner` (an object or class) lacks."""
    cls = owner if isinstance(owner, type) else type(owner)
    rows = [r for r in PRIVATE if name in r.name.split(", ")]
    # Two rows share `_trainable_variables` (optimizer, layer): prefer the owner's class.
    bases = {c.__name__ for c in cls.__mro__}
    rows = [r for r in rows if r.owner.rsplit(".", 1)[-1] in bases] or rows
    use = f" lrtech uses it for: {rows[0].used_for}." if rows else ""
    return KerasPrivateError(
        f"Keras {keras.__version__}: {cls.__qualname__}.{name} is missing.{use} "
        "Update trainer/keras_private.py for this Keras version."
    )


def _get(obj: object, name: str):
    try:
        return getattr(obj, name)
    except AttributeError:
        raise missing(obj, name) from None


# --- optimizers -------------------------------------------------------------------------


def check_hooks(optimizer_class: type) -> None:
    """Raises `KerasPrivateError` if `optimizer_class` lacks a hook we override."""
    for name in HOOKS:
        if not callable(getattr(optimizer_class, name, None)):
            raise missing(optimizer_class, name)


def variable_index(optimizer, variable) -> int:
    """Position of `variable` among the variables `optimizer` was built with.

    Raises:
        KeyError: The optimizer was not built with `variable`.
    """
    return _get(optimizer, "_get_variable_index")(variable)


def built_variables(optimizer) -> list:
    """The model variables `optimizer` was built with, in build order."""
    return list(_get(optimizer, "_trainable_variables"))


def ema_copies(optimizer) -> list:
    """Keras' EMA copy of each built variable (optimizers made with `use_ema=True`)."""
    return list(_get(optimizer, "_model_variables_moving_average"))


def learning_rate_object(optimizer):
    """The optimizer's schedule (or callable) learning rate; None for a constant one."""
    value = _get(optimizer, "_learning_rate")
    return None if isinstance(value, keras.Variable) else value


def copy_weight_decay_exclusions(source, target) -> None:
    """Gives `target` the exclusions set by `source.exclude_from_weight_decay(...)`."""
    for name in ("_exclude_from_weight_decay", "_exclude_from_weight_decay_pattern"):
        # Both exist only after exclude_from_weight_decay() was called.
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))


def uses_weight_decay(optimizer, variable) -> bool:
    """False if `variable` is excluded from `optimizer`'s weight decay."""
    return bool(_get(optimizer, "_use_weight_decay")(variable))


def slot_lists(optimizer) -> Iterator[tuple[str, list]]:
    """Yields (attribute name, per-variable list) for every slot list of a built optimizer.

    A slot list is an attribute holding one entry per built variable (None, or an optimizer
    variable of that variable's shape), like Adam's `_momentums`. EMA copies and gradient
    accumulators (`NOT_STATE`) are skipped.
    """
    model_vars = built_variables(optimizer)
    own = {id(v) for v in optimizer.variables}
    for attr, value in vars(optimizer).items():
        if attr in NOT_STATE or isinstance(value, (str, bytes)):
            continue
        if not isinstance(value, collections.abc.Sequence) or len(value) != len(model_vars):
            continue
        slots = list(value)
        if not any(isinstance(s, keras.Variable) for s in slots):
            continue
        if all(
            s is None or (id(s) in own and tuple(s.shape) == tuple(v.shape))
            for s, v in zip(slots, model_vars)
        ):
            yield attr, slots


def slot_initial_value(optimizer, attr: str) -> float:
    """The value a slot list starts from: Adagrad's accumulators start above zero."""
    if attr == ADAGRAD_ACCUMULATORS:
        return float(getattr(optimizer, "initial_accumulator_value", 0.0))
    return 0.0


# --- layers -----------------------------------------------------------------------------


def created_trainable_variables(layer) -> list:
    """Variables `layer` itself created as trainable (not its sublayers'), frozen or not."""
    return list(_get(layer, "_trainable_variables"))


def tracked_sublayers(layer) -> list:
    """The sublayers Keras tracks on `layer` (attributes, lists and dicts of layers)."""
    return list(_get(layer, "_layers"))
