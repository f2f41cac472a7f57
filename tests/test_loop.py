"""The compiled loop: replicas vs one device, steps_per_loop, XLA, freezing, evaluation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tests.helpers import tiny_model
from trainer.loop.compiled import EvalLoop
from trainer.lr import optimizers


def config(tmp_path, **kw):
    base = dict(
        synthetic_train_size=96,
        synthetic_test_size=24,
        train_steps=8,
        first_cycle_steps=3,
        split_at=("2", "4"),
        lr_mults=(0.1, 0.5, 1.0),
        checkpoint_every_steps=1000,
    )
    return helpers.tiny_config(tmp_path, **{**base, **kw})


def train(cfg, strategy=None):
    exp, metrics = helpers.trained(cfg, strategy=strategy)
    return exp, [v.numpy() for v in exp.model.weights], metrics


def layer_of(path):
    return path.split("/")[-2]  # "sequential_3/head/kernel" -> "head"


def local(path):
    return "/".join(path.split("/")[1:])  # without the model's (counter-numbered) name


def assert_close(a, b, atol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The default config trained on one device: (weights, metrics); steps_per_loop=4."""
    _, weights, metrics = train(config(tmp_path_factory.mktemp("loop") / "one"))
    return weights, metrics


def test_two_replicas_match_one_device(tmp_path, one_device):
    one, m1 = one_device
    exp, two, m2 = train(config(tmp_path / "two"), helpers.two_replicas())
    assert exp.strategy.num_replicas_in_sync == 2
    assert int(exp.optimizer.iterations.numpy()) == 8  # once per step, not per replica
    assert_close(one, two, atol=1e-5)
    assert m1["final"]["accuracy"] == pytest.approx(m2["final"]["accuracy"])


def test_steps_per_loop_does_not_change_the_result(tmp_path, one_device):
    exp, a, _ = train(config(tmp_path / "a", steps_per_loop=1))
    b, _ = one_device
    assert config(tmp_path).steps_per_loop == 4
    assert exp.trainer.traces == 1  # one trace for 8 calls: num_steps is a tensor
    assert_close(a, b, atol=0)


def test_jit_compile_matches(tmp_path):
    _, a, _ = train(config(tmp_path / "a", jit_compile=True, optimizer="momentum"))
    _, b, _ = train(config(tmp_path / "b", optimizer="momentum"))
    assert_close(a, b, atol=1e-5)


def test_weights_move_with_segment_learning_rates(tmp_path):
    # With SGD and lr_mults (0, ...), segment 0 stays put while the head moves.
    cfg = config(tmp_path, optimizer="sgd", schedule="constant", lr_mults=(1e-30, 1.0, 1.0))
    exp = helpers.build(cfg)
    before = {v.path: v.numpy().copy() for v in exp.model.trainable_variables}
    exp.restore()
    exp.train()
    after = {v.path: v.numpy() for v in exp.model.trainable_variables}
    conv = [p for p in before if layer_of(p) == "conv"]
    head = [p for p in before if layer_of(p) == "head"]
    assert len(conv) == len(head) == 2
    assert all(np.allclose(before[p], after[p], atol=1e-20) for p in conv)
    assert all(not np.allclose(before[p], after[p]) for p in head)


def test_gradual_unfreezing(tmp_path):
    # 96 examples / 16 = 6 steps per epoch; unfreeze one segment every 0.5 epoch = 3 steps.
    cfg = config(tmp_path, freeze_segments=2, unfreeze_every=0.5, train_steps=8)
    exp = helpers.build(cfg)
    exp.restore()
    assert exp.plan.unfreeze_steps() == [3, 6]
    initial = {local(v.path): v.numpy().copy() for v in exp.model.trainable_variables}
    seen, at_step_6 = [], {}
    train = exp.trainer.train

    def spy(num_steps):
        t = exp.trainer
        layers = sorted({layer_of(v.path) for v in t.trainable_variables})
        seen.append((exp.step, num_steps, t.first_trainable, layers))
        if exp.step == 6:
            at_step_6.update({v.path: v.numpy().copy() for v in exp.model.trainable_variables})
        return train(num_steps)

    exp.trainer.train = spy
    exp.train()
    assert [s[:3] for s in seen] == [(0, 3, 2), (3, 3, 1), (6, 2, 0)]
    assert seen[0][3] == ["head"] and seen[1][3] == ["head", "mid"]
    assert exp.trainer.traces == 3  # one trace per trainable set
    assert exp.trainer.first_trainable == 0
    # conv trained only in the last 2 steps; check its state after the first 6 directly
    # (recorded as the last loop, steps 6-8, started).
    assert len(at_step_6) == len(initial) == 6
    for path, value in at_step_6.items():
        same = np.array_equal(value, initial[local(path)])
        assert same == (layer_of(path) == "conv"), path
    # ... and then it moved.
    conv = [v for v in exp.model.trainable_variables if layer_of(v.path) == "conv"]
    assert conv and not any(np.array_equal(v.numpy(), initial[local(v.path)]) for v in conv)


def test_eval_matches_numpy_with_partial_last_batch():
    strategy = helpers.two_replicas()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(23, 5)).astype(np.float32)
    y = rng.integers(0, 7, 23).astype(np.int32)
    with strategy.scope():
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(7)])
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # 8, 8, 7
    )
    got = EvalLoop(strategy, model, num_classes=7).run(dataset)
    kernel, bias = (v.numpy().astype(np.float64) for v in model.weights)
    logits = x @ kernel + bias
    log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
    log_probs -= logits.max(1, keepdims=True)
    loss = -log_probs[np.arange(23), y].mean()
    accuracy = (logits.argmax(1) == y).mean()
    rank = (logits > logits[np.arange(23), y][:, None]).sum(1)
    assert got["examples"] == 23
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert got["accuracy"] == pytest.approx(accuracy)
    assert got["top5"] == pytest.approx((rank < 5).mean())


def test_clipnorm_clips_the_aggregated_gradient(tmp_path):
    # SGD with a tiny clipnorm: every step moves the weights by exactly lr * clipnorm in norm.
    cfg = config(
        tmp_path,
        optimizer="sgd",
        schedule="constant",
        max_lr=1.0,
        lr_mults=(1.0, 1.0, 1.0),
        clipnorm=1e-3,
        train_steps=1,
    )
    exp = helpers.build(cfg, strategy=helpers.two_replicas())
    before = [v.numpy().copy() for v in exp.model.trainable_variables]
    exp.restore()
    exp.train()
    moved = np.sqrt(
        sum(np.sum((v.numpy() - b) ** 2) for v, b in zip(exp.model.trainable_variables, before))
    )
    assert moved == pytest.approx(1e-3, rel=1e-3)


def test_reset_slots_contract_used_by_unfreezing():
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = tiny_model(3)
    opt = optimizers.make("adam", 0.1)
    opt.build(model.trainable_variables)
    assert optimizers.reset_slots(opt, model.trainable_variables[:1]) == 2  # m and v
