"""Mixed precision: the loss scale decides on the aggregated gradient, so replicas agree."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from trainer.loop import precision
from trainer.loop.compiled import TrainLoop
from trainer.lr import optimizers

GLOBAL_BATCH = 4


def _images(huge_on_replica_1: bool):
    # Replica r gets rows [2r, 2r+2) of each global batch. 1e4 is a fine float16 input, but
    # its kernel gradient times the loss scale (2**15) overflows float16.
    x = np.ones((GLOBAL_BATCH, 4), np.float32)
    if huge_on_replica_1:
        x[2:] = 1e4
    y = np.array([1, 2, 3, 4], np.int32)
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def _model():
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(10, kernel_initializer=keras.initializers.Constant(0.01)),
        ]
    )


@pytest.fixture
def float16_policy():
    previous = keras.config.dtype_policy()
    precision.set_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(previous)


def _our_step(strategy, dataset, steps=1, growth_steps=2000):
    with strategy.scope():
        model = _model()
        segment_of = {v.path: 0 for v in model.trainable_variables}
        opt = optimizers.segmented(
            optimizers.make("sgd", 0.1), segment_of, (1.0,), aggregate_gradients=False
        )
        opt.build(model.trainable_variables)
        scale = precision.DynamicLossScale(2.0**15, growth_steps=growth_steps)
    loop = TrainLoop(strategy, model, opt, GLOBAL_BATCH, loss_scale=scale)
    before = [v.numpy().copy() for v in model.trainable_variables]
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    out = loop.run(iterator, steps, model.trainable_variables)
    after = [v.numpy() for v in model.trainable_variables]
    return before, after, out, scale, opt


def test_inf_on_replica_1_only_skips_the_step_everywhere(float16_policy):
    strategy = helpers.two_replicas()
    before, after, out, scale, opt = _our_step(strategy, _images(huge_on_replica_1=True))
    assert np.isfinite(out["loss"]).all()  # the forward pass is fine; the gradient overflows
    assert not out["applied"][0]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert float(scale.scale.numpy()) == 2.0**14
    # The skipped step consumed a batch: the global step (which the schedule reads) follows.
    assert int(opt.iterations.numpy()) == 1


def test_finite_steps_apply_and_grow_the_scale(float16_policy):
    strategy = helpers.two_replicas()
    before, after, out, scale, opt = _our_step(
        strategy, _images(huge_on_replica_1=False), steps=3, growth_steps=2
    )
    assert out["applied"].all()
    assert int(opt.iterations.numpy()) == 3
    assert not np.array_equal(before[0], after[0])
    # Doubles after 2 good steps, then counts 1 more.
    assert float(scale.scale.numpy()) == 2.0**16
    assert int(scale.good_steps.numpy()) == 1


def test_schedule_follows_the_data_step_after_a_skipped_step(float16_policy):
    # lr 0.1 at global step 0, 0.5 from step 1 on. Batch 1 overflows (skipped), batch 2 is
    # fine: it must train at the rate of step 1, as a run that starts at step 1 does.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.1, 0.5])
    strategy = helpers.two_replicas()
    huge = _images(huge_on_replica_1=True).take(1)
    fine = _images(huge_on_replica_1=False)

    def run(dataset, start_step, initial_scale):
        with strategy.scope():
            model = _model()
            segment_of = {v.path: 0 for v in model.trainable_variables}
            opt = optimizers.segmented(
                optimizers.make("sgd", schedule), segment_of, (1.0,), aggregate_gradients=False
            )
            opt.build(model.trainable_variables)
            opt.iterations.assign(start_step)
            scale = precision.DynamicLossScale(initial_scale)
        loop = TrainLoop(strategy, model, opt, GLOBAL_BATCH, loss_scale=scale)
        iterator = iter(strategy.experimental_distribute_dataset(dataset))
        out = loop.run(iterator, 2 - start_step, model.trainable_variables)
        return [v.numpy() for v in model.trainable_variables], out, opt

    skipped, out, opt = run(huge.concatenate(fine), 0, 2.0**15)
    assert out["applied"].tolist() == [False, True]
    assert int(opt.iterations.numpy()) == 2
    started_at_1, _, _ = run(fine, 1, 2.0**14)
    for a, b in zip(skipped, started_at_1):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
    initial = 0.01
    assert not np.allclose(skipped[0], initial)  # it did train


def test_keras_loss_scale_optimizer_lets_replica_1_inf_through(float16_policy):
    # The pitfall DynamicLossScale exists for: Keras checks replica 0's local gradient only.
    strategy = helpers.two_replicas()
    with strategy.scope():
        model = _model()
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
        opt.build(model.trainable_variables)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
            scaled = opt.scale_loss(loss)
        opt.apply(tape.gradient(scaled, model.trainable_variables), model.trainable_variables)

    @tf.function
    def step(iterator):
        strategy.run(replica_step, args=next(iterator))

    step(iter(strategy.experimental_distribute_dataset(_images(huge_on_replica_1=True))))
    assert not np.isfinite(model.trainable_variables[0].numpy()).all()
    assert float(opt.dynamic_scale.numpy()) == 2.0**15  # and the scale did not back off


def test_loss_scale_update_rules():
    scale = precision.DynamicLossScale(8.0, growth_steps=2)
    for finite, expected_scale, expected_good in [
        (True, 8.0, 1),
        (True, 16.0, 0),
        (False, 8.0, 0),
        (True, 8.0, 1),
        (False, 4.0, 0),
    ]:
        scale.update(tf.constant(finite))
        assert float(scale.scale.numpy()) == expected_scale
        assert int(scale.good_steps.numpy()) == expected_good
    grads, finite = scale.unscale([tf.constant([8.0, 4.0])])
    np.testing.assert_array_equal(grads[0].numpy(), [2.0, 1.0])
    assert bool(finite)
    _, finite = scale.unscale([tf.constant([np.inf, 1.0])])
    assert not bool(finite)


def test_policies():
    previous = keras.config.dtype_policy()
    try:
        precision.set_policy("mixed_bfloat16")
        assert keras.config.dtype_policy().compute_dtype == "bfloat16"
        assert not precision.needs_loss_scale("mixed_bfloat16")
        assert precision.needs_loss_scale("mixed_float16")
        with pytest.raises(ValueError, match="float8"):
            precision.set_policy("float8")
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_experiment_trains_and_checkpoints_with_mixed_precision(tmp_path, policy):
    from trainer.config import Config

    def model_fn(num_classes):
        return keras.Sequential(
            [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(num_classes)]
        )

    config = Config(
        model_dir=str(tmp_path),
        image_size=8,
        synthetic_train_size=32,
        synthetic_test_size=8,
        global_batch_size=8,
        train_steps=3,
        steps_per_loop=2,
        progress=False,
        mixed_precision=policy,
    )
    exp = helpers.build(config, model_fn, helpers.two_replicas(), plots=True)
    assert exp.model.layers[-1].compute_dtype == policy.split("_")[1]
    assert keras.config.dtype_policy().name == "float32"  # restored after building
    exp.restore()
    metrics = exp.train()
    assert np.isfinite(metrics["final"]["loss"])
    assert (exp.loss_scale is not None) == (policy == "mixed_float16")
    names = [name for name, _ in tf.train.list_variables(exp.checkpointer.latest())]
    assert any("loss_scale" in n for n in names) == (policy == "mixed_float16")
