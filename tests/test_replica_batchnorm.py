"""BatchNorm moving statistics under MirroredStrategy: one value, the mean over the replicas.

Keras 3 mirrors BN's moving_mean/moving_variance without aggregation, so each replica writes
its own batch statistics into its own copy; `trainer.loop.compiled.TrainLoop` averages the copies at
the end of every compiled loop. Two logical CPUs (tests/conftest.py), the real Trainer; and
two MultiWorkerMirroredStrategy processes on localhost (one replica each).
"""

import functools
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from tests import helpers
from trainer.loop.compiled import EvalLoop, replica_statistics
from trainer.loop.runner import Trainer
from trainer.loop.strategy import distribute_dataset, make_strategy
from trainer.lr import optimizers, segments
from trainer.run_dir.checkpoints import Checkpointer

GLOBAL_BATCH = 16
STEPS_PER_LOOP = (3, 1, 4)  # uneven loops: the average must not depend on where they end
MOMENTUM = 0.5  # fast-moving statistics: every step shows in the final value
SPLIT_AT = ("bn",)  # segment 0: conv; segment 1: bn and head


def _images(n, seed):
    rng = np.random.default_rng(seed)
    # A per-channel offset and scale: the statistics are far from BN's initial 0 and 1.
    images = rng.normal(size=(n, 8, 8, 3)) * [1.0, 2.0, 0.5] + [0.5, -1.0, 2.0]
    return images.astype("float32"), rng.integers(0, 3, n).astype("int32")


TRAIN = _images(GLOBAL_BATCH * sum(STEPS_PER_LOOP), seed=1)
EVAL = _images(40, seed=2)  # batches of 16, 16, 8 (each split over both replicas)


def _model_fn(bn_class):
    def build(num_classes):
        return keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(4, 3, use_bias=False, name="conv"),
                bn_class(momentum=MOMENTUM, name="bn"),
                keras.layers.ReLU(),
                keras.layers.Flatten(),
                keras.layers.Dense(num_classes, name="head"),
            ]
        )

    return build


def _train(strategy, bn_class, first_trainable=0):
    """Trains the tiny model with the Trainer, loops of STEPS_PER_LOOP; returns the Trainer."""
    dataset = tf.data.Dataset.from_tensor_slices(TRAIN).batch(GLOBAL_BATCH)
    keras.utils.set_random_seed(0)  # the same initial weights under every strategy
    with strategy.scope():
        model = _model_fn(bn_class)(3)
        optimizer = optimizers.segmented(
            optimizers.make("adam", 0.01),
            segments.assign(model, SPLIT_AT),
            (0.5, 1.0),
            aggregate_gradients=False,
        )
        optimizer.build(model.trainable_variables)
    trainer = Trainer(
        strategy,
        model,
        optimizer,
        lambda step: distribute_dataset(strategy, dataset.skip(step)),
        split_at=SPLIT_AT,
        global_batch_size=GLOBAL_BATCH,
    )
    trainer.set_first_trainable(first_trainable, reset_new=False)
    for n in STEPS_PER_LOOP:
        trainer.train(n)
    assert trainer.step == sum(STEPS_PER_LOOP)
    return trainer


def _statistics(model):
    bn = model.get_layer("bn")
    return bn.moving_mean, bn.moving_variance


def _copies(variable):
    return [c.numpy() for c in variable.value.values]


def _evaluate(strategy, model):
    dataset = tf.data.Dataset.from_tensor_slices(EVAL).batch(GLOBAL_BATCH)
    return EvalLoop(strategy, model, num_classes=3).run(distribute_dataset(strategy, dataset))


def test_only_the_moving_statistics_are_averaged():
    with helpers.two_replicas().scope():
        model = keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(4, 3, name="conv"),
                keras.layers.BatchNormalization(name="bn"),
                keras.layers.Dropout(0.5, seed=1),  # integer seed state: left alone
                keras.layers.Flatten(),
                keras.layers.Dense(3, name="head"),
            ]
        )
    model.get_layer("conv").trainable = False  # frozen kernels are not statistics
    got = [v.path for v in replica_statistics(model)]
    assert got == [v.path for v in _statistics(model)]


@functools.cache
def _trained_on_two_replicas(bn_class):
    """(strategy, model): every layer trained on two replicas (once per class and process)."""
    strategy = helpers.two_replicas()
    return strategy, _train(strategy, bn_class).model


@pytest.fixture(
    params=[keras.layers.BatchNormalization, models.layers.BatchNormalization],
    ids=["keras", "fused"],
)
def trained(request):
    """(strategy, model, BN class), from `_trained_on_two_replicas`."""
    return (*_trained_on_two_replicas(request.param), request.param)


def test_replica_copies_are_identical_after_training(trained):
    _, model, _ = trained
    for variable in _statistics(model):
        first, second = _copies(variable)
        np.testing.assert_array_equal(first, second, err_msg=variable.path)
    # The statistics moved far from their initial values: the check is not of 0s and 1s.
    mean, variance = (v.numpy() for v in _statistics(model))
    assert np.abs(mean).max() > 0.1 and np.abs(variance - 1.0).max() > 0.1


def _reference_statistics(conv_kernel):
    """NumPy float64: the moving statistics of one device and of two replicas + MEAN.

    The conv is frozen, so the BN input of every step is known. One device's batch mean is
    the mean of the two halves' means (equal halves), so the moving means agree; its batch
    variance also holds the between-halves term ((mean_1 - mean_2) / 2)^2, which the mean of
    the halves' variances lacks.
    """
    x = TRAIN[0].astype(np.float64)
    k = conv_kernel.astype(np.float64)
    # Valid 3x3 convolution (Keras' Conv2D is a cross-correlation): [n, 6, 6, 4].
    patches = np.stack([x[:, i : i + 6, j : j + 6, :] for i in range(3) for j in range(3)], -2)
    y = np.einsum("nhwpc,pco->nhwo", patches, k.reshape(9, 3, -1))
    one = {"mean": np.zeros(4), "variance": np.ones(4)}
    two = {"mean": np.zeros(4), "variance": np.ones(4)}
    half = GLOBAL_BATCH // 2
    for step in range(sum(STEPS_PER_LOOP)):
        batch = y[step * GLOBAL_BATCH : (step + 1) * GLOBAL_BATCH]
        halves = (batch[:half], batch[half:])  # what each replica gets of the global batch
        full_stats = (batch.mean((0, 1, 2)), batch.var((0, 1, 2)))
        half_stats = [np.mean([h.mean((0, 1, 2)) for h in halves], 0)]
        half_stats.append(np.mean([h.var((0, 1, 2)) for h in halves], 0))
        for stats, new in ((one, full_stats), (two, half_stats)):
            for name, value in zip(("mean", "variance"), new):
                stats[name] = MOMENTUM * stats[name] + (1 - MOMENTUM) * value
    return one, two


def test_moving_statistics_match_one_device_and_numpy():
    # Conv frozen (segment 0), BN and head train: the BN input is the same in both runs.
    # Keras' layer only: the fused one computes the same statistics on two replicas
    # (tests/test_batchnorm.py) and the averaging does not depend on the layer.
    bn_class = keras.layers.BatchNormalization
    one = _train(make_strategy("one_device"), bn_class, first_trainable=1).model
    two = _train(helpers.two_replicas(), bn_class, first_trainable=1).model
    kernel = one.get_layer("conv").kernel.numpy()
    np.testing.assert_array_equal(two.get_layer("conv").kernel.numpy(), kernel)
    ref_one, ref_two = _reference_statistics(kernel)
    (mean_1, variance_1), (mean_2, variance_2) = (
        [v.numpy() for v in _statistics(m)] for m in (one, two)
    )
    # float32 round-off on O(1) statistics; Keras' E[x^2] - E[x]^2 loses a few more bits.
    np.testing.assert_allclose(mean_2, mean_1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mean_1, ref_one["mean"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(mean_2, ref_two["mean"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(variance_1, ref_one["variance"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(variance_2, ref_two["variance"], rtol=1e-5, atol=0)
    # Two replicas' variance is smaller by the (weighted) between-halves term: not a bug, the
    # per-replica batch statistics of tf.keras and PyTorch DDP (without SyncBatchNorm).
    gap = ref_one["variance"] - ref_two["variance"]
    assert np.all(gap > 0) and gap.max() > 1e-3
    np.testing.assert_allclose(variance_1 - variance_2, gap, rtol=0, atol=2e-5)


def test_eval_on_two_replicas_equals_the_restored_checkpoint_on_one_device(trained, tmp_path):
    two, model, bn_class = trained
    loss_two = _evaluate(two, model)
    Checkpointer(str(tmp_path), keep=1, model=model).save(sum(STEPS_PER_LOOP), model)
    one = make_strategy("one_device")
    with one.scope():
        restored = _model_fn(bn_class)(3)
    assert Checkpointer(str(tmp_path), keep=1, model=restored).restore()
    for a, b in zip(_statistics(restored), _statistics(model)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    loss_one = _evaluate(one, restored)
    assert loss_one["examples"] == loss_two["examples"] == 40
    assert loss_two["loss"] == pytest.approx(loss_one["loss"], rel=1e-6)
    assert loss_two["accuracy"] == loss_one["accuracy"]


WORKER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from trainer import runtime
    runtime.configure(quiet=True)
    import keras, numpy as np
    from tests.test_replica_batchnorm import _statistics, _train
    from trainer.loop.strategy import make_strategy
    model = _train(make_strategy("multi_worker"), keras.layers.BatchNormalization).model
    np.savez(sys.argv[1], *[v.value.values[0].numpy() for v in _statistics(model)])
    """
)


def test_two_workers_hold_the_same_statistics_as_two_local_replicas(tmp_path):
    # Across workers only a collective all-reduce can average the copies (no cross-replica
    # read sees the other worker's). The local two-replica run over the same global batches
    # is the reference: replica i and worker i get the same half of every batch. About 20 s
    # on 2 idle cores, mostly the two processes importing TensorFlow.
    _, local = _trained_on_two_replicas(keras.layers.BatchNormalization)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(helpers.ROOT)))
    helpers.wait_for(helpers.start_workers(script, lambda i: [str(tmp_path / f"w{i}.npz")]))
    got = []
    for index in range(2):
        with np.load(tmp_path / f"w{index}.npz") as z:
            got.append([z[f"arr_{i}"] for i in range(len(z.files))])
    for w0, w1, variable in zip(*got, _statistics(local), strict=True):
        np.testing.assert_array_equal(w0, w1, err_msg=variable.path)
        np.testing.assert_allclose(w0, variable.numpy(), rtol=0, atol=1e-6)
