"""BatchNormalization on TensorFlow's fused kernel: Keras' layer, same math, fewer ops.

Keras 3 normalizes with separate ops (moments, then subtract, scale, shift; and their
gradients), each a pass over the activations. TensorFlow's `FusedBatchNormV3` does the forward
pass in one kernel and the backward pass in another (oneDNN's on CPU, cuDNN's on GPU). On 2
CPU cores, resnet20 stepping on a fixed batch of 128 went from 265-278 to 362-410 images/s,
and the quickstart (resnet8) from 2 min 11 s to 1 min 38 s. ResNet50 at 32x32 gained nothing
measurable (its activations are tiny); at 224 px a training step ran 1.16x (ResNet50) and 1.21x
(EfficientNetV2-B0) as fast, so `models.applications` swaps it into keras.applications
backbones too (BENCHMARKS.md section 12).

`BatchNormalization` is a drop-in subclass of `keras.layers.BatchNormalization`: same
arguments, variables, moving-average rule (`moving = moving * momentum + batch * (1 -
momentum)`, with the *biased* batch variance, as Keras does) and weight-file keys (the class
name is the same). It takes the fused kernel when it can and Keras' own code otherwise:

* fused: TensorFlow backend, 4-D input normalized over the last axis, no mask, no renorm, not
  synchronized, and ``epsilon >= 1.001e-5`` (cuDNN's floor, the value keras.applications'
  ResNets use);
* otherwise (for example the 2-D ``head_bn``): `keras.layers.BatchNormalization.call`.

Registered as ``lrtech>BatchNormalization`` so saved ``.keras`` models load once `models` is
imported; `models.portable` turns it back into Keras' layer for exports.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# cuDNN rejects smaller values; TensorFlow's Python wrapper raises them to this silently.
MIN_FUSED_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="lrtech")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that runs `FusedBatchNormV3` when it can."""

    def _fusable(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and self.epsilon >= MIN_FUSED_EPSILON
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.dtype in (tf.float16, tf.bfloat16, tf.float32)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        batch_stats = bool(training and self.trainable)
        # Batch statistics: the kernel computes them (empty inputs); else the moving ones.
        no_stats = tf.zeros([0], tf.float32)
        outputs, mean, unbiased, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=scale,
            offset=offset,
            mean=no_stats if batch_stats else tf.cast(self.moving_mean, tf.float32),
            variance=no_stats if batch_stats else tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=batch_stats,
        )
        if batch_stats:
            # The kernel hands back the Bessel-corrected variance; Keras averages the biased
            # one (the variance it normalized with).
            n = tf.cast(tf.size(inputs) // channels, tf.float32)
            variance = unbiased * ((n - 1.0) / tf.maximum(n, 1.0))
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1 - self.momentum)
            )
        return tf.cast(outputs, self.compute_dtype)
