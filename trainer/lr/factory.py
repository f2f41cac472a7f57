"""Optimizers by name, multipliers from a spread, and restarting optimizer state.

opt = make("adam", schedules.SGDR(1e-3, 1000), weight_decay=1e-4)
mults = mults_from_spread(3, 100.0)  # (0.01, 0.1, 1.0)
"""

from __future__ import annotations

import math
import numbers

import keras
import tensorflow as tf

from trainer import config as config_lib
from trainer.errors import UserError
from trainer.lr import keras_private

OPTIMIZERS = config_lib.OPTIMIZERS

# The Keras classes `make` returns; their segmented subclasses are registered at import.
_MAKE_CLASSES = (
    keras.optimizers.SGD,
    keras.optimizers.RMSprop,
    keras.optimizers.Adam,
    keras.optimizers.AdamW,
    keras.optimizers.Adagrad,
    keras.optimizers.Nadam,
)


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
