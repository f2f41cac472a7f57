"""models.layers.BatchNormalization: the fused kernel computes what Keras' layer computes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from models.layers import MIN_FUSED_EPSILON, BatchNormalization
from schedules import SGDR
from tests import helpers
from trainer.lr import optimizers, segments

CHANNELS = 6


def _pair(shape, **kw):
    """Keras' layer and ours, built on `shape`, with the same random (positive) weights."""
    ref, ours = keras.layers.BatchNormalization(**kw), BatchNormalization(**kw)
    ref.build(shape)
    ours.build(shape)
    rng = np.random.default_rng(0)
    for a, b in zip(ref.weights, ours.weights, strict=True):
        value = rng.uniform(0.5, 1.5, a.shape).astype("float32")
        a.assign(value)
        b.assign(value)
    return ref, ours


def _graph_ops(layer, x, training):
    fn = tf.function(lambda t: layer(t, training=training))
    return {op.type for op in fn.get_concrete_function(x).graph.get_operations()}


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"center": False},
        {"scale": False},
        {"momentum": 0.9, "epsilon": MIN_FUSED_EPSILON},
    ],
    ids=["default", "no_center", "no_scale", "resnet"],
)
def test_training_and_inference_match_keras(kw):
    x = tf.random.stateless_normal([8, 5, 5, CHANNELS], seed=[1, 2]) * 3.0 + 1.0
    ref, ours = _pair(x.shape, **kw)
    # Weights that vary over positions, so no gradient is a sum that cancels to zero.
    probe = tf.random.stateless_normal(x.shape, seed=[3, 4])

    @tf.function
    def step(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * probe)
        return y, tape.gradient(loss, [x, *layer.trainable_weights])

    for _ in range(3):  # three updates of the moving statistics
        y_ref, g_ref = step(ref)
        y_ours, g_ours = step(ours)
        np.testing.assert_allclose(y_ours, y_ref, atol=2e-6)
        for a, b in zip(g_ours, g_ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    for a, b in zip(ours.non_trainable_weights, ref.non_trainable_weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    # Not the initial values: the statistics really moved.
    assert not np.allclose(ours.moving_mean.numpy(), 0.0)
    np.testing.assert_allclose(ours(x, training=False), ref(x, training=False), atol=1e-5)


def test_single_value_per_channel_gives_zero_variance_like_keras():
    x = tf.constant(np.arange(CHANNELS, dtype="float32").reshape(1, 1, 1, CHANNELS))
    ref, ours = _pair(x.shape, momentum=0.5)
    # The output is beta; round-off in x - mean (1e-7 * x) is scaled by 1/sqrt(epsilon) = 32.
    np.testing.assert_allclose(ours(x, training=True), ref(x, training=True), atol=1e-4)
    for a, b in zip(ours.non_trainable_weights, ref.non_trainable_weights, strict=True):
        assert np.all(np.isfinite(a.numpy()))
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_fused_kernel_only_where_it_applies():
    four_d = tf.zeros([2, 4, 4, CHANNELS])
    assert "FusedBatchNormV3" in _graph_ops(BatchNormalization(), four_d, True)
    assert "FusedBatchNormV3" in _graph_ops(BatchNormalization(), four_d, False)
    # Below cuDNN's epsilon floor, over another axis, or on 2-D input: Keras' own ops.
    small_eps = BatchNormalization(epsilon=1e-5)
    assert "FusedBatchNormV3" not in _graph_ops(small_eps, four_d, True)
    channels_first = BatchNormalization(axis=1)
    assert "FusedBatchNormV3" not in _graph_ops(channels_first, four_d, True)
    two_d = tf.zeros([2, CHANNELS])
    assert "FusedBatchNormV3" not in _graph_ops(BatchNormalization(), two_d, True)


def test_fallback_paths_still_match_keras():
    x = tf.random.stateless_normal([4, 3, 5, CHANNELS], seed=[3, 4])
    ref, ours = _pair(x.shape, epsilon=1e-5)
    np.testing.assert_allclose(ours(x, training=True), ref(x, training=True), atol=1e-6)
    x2 = tf.random.stateless_normal([16, CHANNELS], seed=[5, 6])
    ref, ours = _pair(x2.shape)
    np.testing.assert_allclose(ours(x2, training=True), ref(x2, training=True), atol=1e-6)


def test_mixed_float16_keeps_float16_activations_and_float32_statistics():
    x = tf.random.stateless_normal([8, 4, 4, CHANNELS], seed=[7, 8])
    ref, ours = _pair(x.shape)
    ours_16 = BatchNormalization(dtype="mixed_float16")
    ours_16.build(x.shape)
    for a, b in zip(ours.weights, ours_16.weights, strict=True):
        b.assign(a)
    y16 = ours_16(tf.cast(x, tf.float16), training=True)
    assert y16.dtype == tf.float16
    assert ours_16.moving_mean.dtype == "float32"
    np.testing.assert_allclose(y16.numpy().astype("float32"), ref(x, training=True), atol=1e-2)
    np.testing.assert_allclose(ours_16.moving_variance, ref.moving_variance, rtol=1e-3)


def test_small_resnets_use_it_and_keep_keras_weight_keys():
    model = models.build("resnet8", 10)
    bns = [layer for layer in model.layers if "_bn" in layer.name]
    assert bns and all(type(layer) is BatchNormalization for layer in bns)
    keys = models.transfer.weight_keys(model)
    # Keras keys weights by class name: files saved with keras' own layer still load.
    assert "layers/batch_normalization" in keys
    assert "layers/batch_normalization_1" in keys


def _bn_model(layer_cls):
    def build(num_classes):
        return keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Rescaling(1 / 255.0),
                # No bias: its gradient through BatchNorm is zero up to round-off, which Adam
                # would blow up into full-size steps of noise.
                keras.layers.Conv2D(4, 3, use_bias=False, name="conv"),
                layer_cls(momentum=0.5, name="bn"),
                keras.layers.ReLU(),
                keras.layers.Flatten(),
                keras.layers.Dense(num_classes, name="head"),
            ]
        )

    return build


def _train_on_two_replicas(build, steps=8, global_batch=16):
    """Trains build(3) for `steps` steps under MirroredStrategy on two CPUs; returns weights.

    A plain compiled loop (segmented Adam with SGDR, segments split at layer 2): what the
    trainer runs, without depending on its driver.
    """
    strategy = helpers.two_replicas()
    rng = np.random.default_rng(5)
    images = rng.uniform(0, 255, (steps * global_batch, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 3, steps * global_batch)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(global_batch)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build(3)
        schedule = SGDR(0.01, 3)
        opt = optimizers.segmented(
            optimizers.make("adam", schedule), segments.assign(model, ["2"]), (0.5, 1.0)
        )
        opt.build(model.trainable_variables)

    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            loss = tf.reduce_sum(per_example) / global_batch
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

    @tf.function
    def train(iterator):
        for _ in tf.range(steps):
            strategy.run(step, args=next(iterator))

    train(iter(strategy.experimental_distribute_dataset(dataset)))
    assert int(opt.iterations.numpy()) == steps
    return model, [v.numpy() for v in model.weights]


def test_trains_like_keras_layer_on_two_replicas():
    # Same per-replica statistics and the same moving-average updates under MirroredStrategy.
    results = {}
    for name, cls in (("keras", keras.layers.BatchNormalization), ("fused", BatchNormalization)):
        model, weights = _train_on_two_replicas(_bn_model(cls))
        assert type(model.get_layer("bn")) is cls
        # The statistics moved (momentum 0.5 over 8 steps): the comparison covers them.
        assert not np.allclose(model.get_layer("bn").moving_mean.numpy(), 0.0)
        results[name] = weights
    for a, b in zip(results["fused"], results["keras"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
