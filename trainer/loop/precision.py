"""Mixed precision: the Keras dtype policy and a dynamic loss scale that all replicas agree on.

Keras' `LossScaleOptimizer` decides "finite" from replica 0's *local* gradient, so an inf that
only replica 1 sees reaches the weights. Here the train step all-reduces first and
`DynamicLossScale.unscale` checks the *aggregated* gradient, which every replica holds
identically: either all replicas apply the step or none does.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer.config import MIXED_PRECISION
from trainer.errors import UserError

POLICIES = MIXED_PRECISION


def set_policy(name: str) -> None:
    """Sets the global Keras dtype policy; call before building the model.

    Args:
        name: `none` (float32), `mixed_float16` or `mixed_bfloat16`.
    """
    if name not in POLICIES:
        raise UserError(f"--mixed_precision={name!r} is unknown; choose one of {POLICIES}")
    keras.config.set_dtype_policy("float32" if name == "none" else name)


def needs_loss_scale(name: str) -> bool:
    """float16 underflows without loss scaling; bfloat16 has float32's exponent range."""
    return name == "mixed_float16"


class DynamicLossScale(tf.Module):
    """Loss scale that halves on a non-finite step and doubles after `growth_steps` good ones.

    Create it inside `strategy.scope()`. `scale_loss` and `unscale` run in replica context;
    `update` runs in cross-replica context with the (replica-independent) finite flag. Its two
    variables are checkpointed with the run.

    Args:
        initial_scale: Starting scale (a power of two).
        growth_steps: Consecutive finite steps after which the scale doubles.
    """

    def __init__(self, initial_scale: float = 2.0**15, growth_steps: int = 2000):
        super().__init__(name="loss_scale")
        if initial_scale <= 0 or growth_steps < 1:
            raise UserError(
                f"loss scale: initial_scale={initial_scale} must be > 0 and "
                f"growth_steps={growth_steps} >= 1"
            )
        self.growth_steps = int(growth_steps)
        agg = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.scale = tf.Variable(
            float(initial_scale), dtype=tf.float32, name="scale", trainable=False, aggregation=agg
        )
        self.good_steps = tf.Variable(
            0, dtype=tf.int64, name="good_steps", trainable=False, aggregation=agg
        )

    def scale_loss(self, loss):
        """Returns `loss * scale` (float32)."""
        return tf.cast(loss, tf.float32) * self.scale

    def unscale(self, grads):
        """Divides aggregated gradients by the scale; returns `(grads, all_finite)`."""
        inv = 1.0 / self.scale
        grads = [g * tf.cast(inv, g.dtype) for g in grads]
        return grads, all_finite(grads)

    def update(self, finite):
        """Halves the scale on a non-finite step, doubles it after `growth_steps` finite ones."""
        grow = tf.logical_and(finite, self.good_steps + 1 >= self.growth_steps)
        new_scale = tf.where(
            finite,
            tf.where(grow, self.scale * 2.0, self.scale),
            tf.maximum(self.scale * 0.5, 1.0),
        )
        new_good = tf.where(
            tf.logical_and(finite, tf.logical_not(grow)),
            self.good_steps + 1,
            tf.zeros_like(self.good_steps),
        )
        return tf.group(self.scale.assign(new_scale), self.good_steps.assign(new_good))


def all_finite(tensors) -> tf.Tensor:
    """True when every element of every tensor is finite."""
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in tensors]))
