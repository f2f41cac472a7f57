"""trainer.averaging.weights: the SWA running average and the BatchNorm recompute, 1 and 2
replicas.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.layers import BatchNormalization as FusedBatchNormalization
from tests import helpers
from trainer.averaging.weights import WeightAverage, averaged_weights, batch_norm_layers, update_bn

EPSILON = 1e-3  # both BN layers' epsilon (Keras' default)


def bn_model():
    """1x1 conv -> BN (4-D, the fused kernel) -> ReLU -> dense -> BN (2-D, Keras') -> head.

    Every step is a matmul or elementwise, so `_reference_statistics` redoes it in numpy.
    """
    return keras.Sequential(
        [
            keras.Input((3, 3, 2)),
            keras.layers.Conv2D(4, 1, name="conv"),
            FusedBatchNormalization(momentum=0.9, name="bn_conv"),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(5, name="mid"),
            keras.layers.BatchNormalization(momentum=0.8, name="bn_mid"),
            keras.layers.Dense(3, name="head"),
        ]
    )


def _randomize(model, seed):
    """Weights of order 1; BN scales and variances positive."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        low = 0.5 if w.name in ("gamma", "moving_variance") else -0.5
        w.assign(rng.uniform(low, low + 1.0, w.shape).astype("float32"))


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    # Means and scales that differ per channel and batch, so wrong pooling would show.
    return (rng.normal(size=(n, 3, 3, 2)) * [1.0, 2.0] + [0.5, -1.0]).astype("float32")


def _reference_statistics(model, batches):
    """Per BN layer: the numpy mean over batches of the training-mode batch mean and var."""
    get = {w.path.split("/", 1)[1]: w.numpy().astype(np.float64) for w in model.weights}
    sums = {"bn_conv": [0.0, 0.0], "bn_mid": [0.0, 0.0]}

    def record(name, x, axes):
        mean, var = x.mean(axes), x.var(axes)  # biased, as Keras
        sums[name][0] = sums[name][0] + mean
        sums[name][1] = sums[name][1] + var
        return (x - mean) / np.sqrt(var + EPSILON) * get[f"{name}/gamma"] + get[f"{name}/beta"]

    for x in batches:
        h = x.astype(np.float64) @ get["conv/kernel"][0, 0] + get["conv/bias"]
        h = np.maximum(record("bn_conv", h, (0, 1, 2)), 0.0).reshape(len(x), -1)
        h = h @ get["mid/kernel"] + get["mid/bias"]
        record("bn_mid", h, (0,))
    return {k: [s / len(batches) for s in v] for k, v in sums.items()}


def _statistics(model):
    return {
        layer.name: [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
        for layer in batch_norm_layers(model)
    }


def _local_copies(strategy, variable):
    value = variable.value if isinstance(variable, keras.Variable) else variable
    return [v.numpy() for v in strategy.experimental_local_results(value)]


# WeightAverage -----------------------------------------------------------------------------


def test_running_average_equals_the_mean_and_copies_out():
    model = bn_model()
    variables = averaged_weights(model)
    # Every weight but the four BN statistics (conv, bn gamma/beta, mid, head).
    assert [v.path for v in variables] == [w.path for w in model.weights if "moving" not in w.path]
    assert len(variables) == len(model.weights) - 4
    average = WeightAverage(variables)
    collected = []
    for seed in range(5):
        _randomize(model, seed)
        collected.append([v.numpy() for v in variables])
        average.update()
        if seed == 0:  # the first update copies the weights exactly
            for a, w in zip(average.averages, collected[0]):
                np.testing.assert_array_equal(a.numpy(), w)
    assert average.num_averaged == 5 and average.count.dtype == tf.int64
    for i, a in enumerate(average.averages):
        assert a.dtype == tf.float32 and not a.trainable
        np.testing.assert_allclose(a.numpy(), np.mean([c[i] for c in collected], 0), atol=1e-6)
    assert not average.trainable_variables  # nothing an optimizer could pick up

    other = bn_model()
    average.copy_to(averaged_weights(other))
    for v, a in zip(averaged_weights(other), average.averages):
        np.testing.assert_array_equal(v.numpy(), a.numpy())

    last = [v.numpy() for v in variables]
    means = [a.numpy() for a in average.averages]
    average.swap()  # the model holds the average, the average the model's weights
    for v, a, before, mean in zip(variables, average.averages, last, means):
        np.testing.assert_array_equal(v.numpy(), mean)
        np.testing.assert_array_equal(a.numpy(), before)
    average.swap()
    for v, a, before, mean in zip(variables, average.averages, last, means):
        np.testing.assert_array_equal(v.numpy(), before)
        np.testing.assert_array_equal(a.numpy(), mean)
    assert average.num_averaged == 5

    with pytest.raises(ValueError, match="3 targets"):
        average.copy_to(variables[:3])
    with pytest.raises(ValueError, match="nothing was averaged"):
        WeightAverage(variables).assign_to_model()


def test_low_precision_variables_are_averaged_in_float32():
    v = tf.Variable(np.float16(1.0), dtype=tf.float16)
    average = WeightAverage([v])
    for value in (1.0, 2.0, 2.0):  # mean 5/3, not a float16 number
        v.assign(np.float16(value))
        average.update()
    assert average.averages[0].dtype == tf.float32
    np.testing.assert_allclose(average.averages[0].numpy(), 5 / 3, rtol=1e-7)
    average.assign_to_model()
    assert v.numpy() == np.float16(5 / 3)
    with pytest.raises(ValueError, match="floating-point"):
        WeightAverage([tf.Variable(3)])


def test_checkpoint_round_trip_mid_average_continues_exactly(tmp_path):
    model = bn_model()
    variables = averaged_weights(model)
    straight = WeightAverage(variables)
    first = WeightAverage(variables)
    for seed in range(2):
        _randomize(model, seed)
        straight.update()
        first.update()
    path = tf.train.Checkpoint(weight_average=first).write(str(tmp_path / "ckpt"))
    restored = WeightAverage(variables)
    tf.train.Checkpoint(weight_average=restored).read(path).assert_consumed()
    assert restored.num_averaged == 2
    for seed in range(2, 4):
        _randomize(model, seed)
        straight.update()
        restored.update()
    assert restored.num_averaged == straight.num_averaged == 4
    for a, b in zip(restored.averages, straight.averages):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Only the average's own state is in its checkpoint, not the model's variables.
    names = [n for n, _ in tf.train.list_variables(path)]
    assert len([n for n in names if "VARIABLE_VALUE" in n]) == len(variables) + 1


def test_two_replicas_average_like_one_device():
    mirrored = helpers.two_replicas()
    one = bn_model()
    one_average = WeightAverage(averaged_weights(one))
    with mirrored.scope():
        two = bn_model()
        two_average = WeightAverage(averaged_weights(two))
    assert two_average.averages[0].__class__.__name__ == "MirroredVariable"

    @tf.function
    def update_in_a_function():
        two_average.update()

    for seed in range(3):
        _randomize(one, seed)
        one.set_weights(one.get_weights())
        two.set_weights(one.get_weights())
        one_average.update()
        if seed == 0:
            with mirrored.scope():
                two_average.update()  # in the scope, eagerly
        elif seed == 1:
            two_average.update()  # outside the scope
        else:
            with mirrored.scope():
                update_in_a_function()
    assert two_average.num_averaged == 3
    for a, b in zip(two_average.averages, one_average.averages):
        copies = _local_copies(mirrored, a)
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])
        np.testing.assert_allclose(copies[0], b.numpy(), atol=1e-7)

    def in_replica():
        two_average.update()

    with pytest.raises(RuntimeError, match="cross-replica"):
        mirrored.run(in_replica)


# update_bn ---------------------------------------------------------------------------------


def _batches(n=21, batch=6, seed=0):
    x = _images(n, seed)
    return x, [x[i : i + batch] for i in range(0, n, batch)]


def test_update_bn_equals_the_numpy_reference_and_changes_nothing_else():
    model = bn_model()
    _randomize(model, 7)
    x, batches = _batches()  # 6, 6, 6, 3: a last smaller batch weighs as much as the others
    model.layers[1].trainable = False  # frozen: Keras would run it in inference mode
    others = {w.path: w.numpy() for w in model.weights if "moving" not in w.path}
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x), "int32"))).batch(6)
    assert update_bn(model, dataset) == 4
    expected = _reference_statistics(model, batches)
    for name, (mean, var) in _statistics(model).items():
        np.testing.assert_allclose(mean, expected[name][0], atol=1e-5)
        np.testing.assert_allclose(var, expected[name][1], atol=1e-5)
    for w in model.weights:
        if "moving" not in w.path:
            np.testing.assert_array_equal(w.numpy(), others[w.path], err_msg=w.path)
    bn_conv, bn_mid = batch_norm_layers(model)
    assert (bn_conv.momentum, bn_mid.momentum) == (0.9, 0.8)
    assert not bn_conv.trainable and bn_mid.trainable
    assert not bn_conv.synchronized and not bn_mid.synchronized
    assert len(model.trainable_weights) == len(model.weights) - 6

    # An empty pass is an error that leaves the statistics and the flags as they were.
    before = _statistics(model)
    with pytest.raises(ValueError, match="no batch"):
        update_bn(model, dataset.take(0))
    for name, values in _statistics(model).items():
        for a, b in zip(values, before[name]):
            np.testing.assert_array_equal(a, b)
    assert bn_conv.momentum == 0.9 and not bn_conv.trainable
    with pytest.raises(ValueError, match="finite"):
        update_bn(model, dataset.repeat())
    assert update_bn(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), dataset) == 0


def test_update_bn_on_two_replicas_equals_one_device():
    mirrored = helpers.two_replicas()
    one = bn_model()
    _randomize(one, 3)
    with mirrored.scope():
        two = bn_model()
    two.set_weights(one.get_weights())
    x, batches = _batches(n=23, batch=8)  # 8, 8, 7: the last global batch splits 4 + 3
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(8)
    assert update_bn(one, dataset) == 3
    distributed = mirrored.experimental_distribute_dataset(dataset)
    assert update_bn(two, distributed, mirrored) == 3
    expected = _reference_statistics(one, batches)
    for layer in batch_norm_layers(two):
        for i, name in enumerate(("moving_mean", "moving_variance")):
            copies = _local_copies(mirrored, getattr(layer, name))
            assert len(copies) == 2
            np.testing.assert_array_equal(copies[0], copies[1])
            single = getattr(one.get_layer(layer.name), name).numpy()
            np.testing.assert_allclose(copies[0], single, atol=1e-5)
            np.testing.assert_allclose(copies[0], expected[layer.name][i], atol=1e-5)
        assert not layer.synchronized
    for a, b in zip(two.weights, one.weights):
        if "moving" not in a.path:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
