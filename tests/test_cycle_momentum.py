"""Momentum cycling through the segmented optimizer, against plain NumPy reference optimizers.

The reference applies, at step t (0-based), each segment's learning rate `mult * lr(t)` and the
schedule's momentum `mom(t)` in the optimizers' own formulas written out in NumPy: Keras' SGD
form (`m = mom * m - lr * g`) and Adam with the current beta_1 in the bias correction
(`1 - beta_1(t) ** (t + 1)`), as PyTorch's and fastai's Adam do.
"""

import numpy as np
import pytest
import tensorflow as tf

from schedules import OneCycle
from tests import helpers
from tests.test_optimizers import BATCH, MULTS, data, make_train, segment_of, tiny_model
from trainer.errors import UserError
from trainer.lr import optimizers

STEPS = 20
WEIGHT_DECAY = 0.05


def one_cycle():
    # pct_start 0.3 of 20 steps: momentum falls for 6 steps and rises for 14.
    return OneCycle(0.05, STEPS, pct_start=0.3, div=10.0, div_final=100.0, moms=(0.95, 0.8, 0.9))


def run_segmented(name, strategy=None, **make_kw):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = tiny_model()
        base = optimizers.make(name, one_cycle(), **make_kw)
        opt = optimizers.segmented(base, segment_of(model), MULTS, cycle_momentum=True)
        opt.build(model.trainable_variables)
    make_train(model, opt.apply, strategy)(*data(STEPS))
    return model, opt


def reference(name, weight_decay=0.0):
    """Trains tiny_model eagerly with TF gradients and a NumPy optimizer update."""
    model = tiny_model("ref")
    schedule = one_cycle()
    xs, ys = data(STEPS)
    weights = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    first = [np.zeros_like(w) for w in weights]
    second = [np.zeros_like(w) for w in weights]
    for t in range(STEPS):
        for v, w in zip(model.trainable_variables, weights):
            v.assign(w.astype(np.float32))
        with tf.GradientTape() as tape:
            out = model(xs[t])
            loss = tf.reduce_sum(tf.square(out - ys[t])) / BATCH
        grads = [
            g.numpy().astype(np.float64) for g in tape.gradient(loss, model.trainable_variables)
        ]
        base_lr = float(schedule(t))
        mom = float(schedule.momentum(t))
        for i, g in enumerate(grads):
            lr = MULTS[i // 2] * base_lr
            weights[i] = weights[i] - weights[i] * weight_decay * lr
            if name in ("momentum", "nesterov"):
                first[i] = mom * first[i] - lr * g
                step = mom * first[i] - lr * g if name == "nesterov" else first[i]
                weights[i] = weights[i] + step
            else:
                beta_2, eps = 0.999, 1e-7
                first[i] = mom * first[i] + (1 - mom) * g
                second[i] = beta_2 * second[i] + (1 - beta_2) * g * g
                alpha = lr * np.sqrt(1 - beta_2 ** (t + 1)) / (1 - mom ** (t + 1))
                weights[i] = weights[i] - alpha * first[i] / (np.sqrt(second[i]) + eps)
    return weights


CASES = [
    ("momentum", {}),
    ("nesterov", {}),
    ("adam", {}),
    ("adamw", {"weight_decay": WEIGHT_DECAY}),
]


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_cycled_momentum_matches_the_reference(name, kw):
    model, opt = run_segmented(name, **kw)
    assert int(opt.iterations.numpy()) == STEPS
    want = reference(name, kw.get("weight_decay", 0.0))
    # Float32 Adam divides by sqrt(v) + 1e-7: plain Keras Adam (no cycling) is itself up to
    # 3e-6 away from this float64 reference; a wrong beta_1 anywhere is off by ~1e-3.
    atol = 1e-5 if name.startswith("adam") else 1e-7
    for i, (got, ref) in enumerate(zip(model.get_weights(), want)):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=atol, err_msg=f"variable {i}")
    # The constant hyperparameter is back after every step (config, saving).
    assert opt.get_config()["cycle_momentum"] is True
    assert (opt.beta_1 if name.startswith("adam") else opt.momentum) == 0.9


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_cycling_changes_the_result(name):
    """Control: the reference without cycling (constant momentum 0.9) differs."""
    cycled, _ = run_segmented(name)
    with tf.distribute.get_strategy().scope():
        model = tiny_model("plain")
        opt = optimizers.segmented(optimizers.make(name, one_cycle()), segment_of(model), MULTS)
        opt.build(model.trainable_variables)
    make_train(model, opt.apply)(*data(STEPS))
    assert not np.allclose(cycled.get_weights()[0], model.get_weights()[0], rtol=1e-4)


@pytest.fixture(scope="module")
def mirrored():
    return helpers.two_replicas()


@pytest.mark.parametrize("name", ["nesterov", "adamw"])
def test_two_replicas_match_one_device(name, mirrored):
    kw = {"weight_decay": WEIGHT_DECAY} if name == "adamw" else {}
    model, opt = run_segmented(name, mirrored, **kw)
    assert int(opt.iterations.numpy()) == STEPS
    single, _ = run_segmented(name, **kw)
    for got, want in zip(model.get_weights(), single.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    want = reference(name, kw.get("weight_decay", 0.0))
    for got, ref in zip(model.get_weights(), want):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adagrad", "nadam"])
def test_optimizers_without_momentum_refuse(name):
    model = tiny_model()
    with pytest.raises(UserError, match="no momentum to cycle"):
        optimizers.segmented(
            optimizers.make(name, one_cycle()), segment_of(model), MULTS, cycle_momentum=True
        )


def test_schedule_without_momentum_refuses():
    model = tiny_model()
    with pytest.raises(UserError, match="has no momentum"):
        optimizers.segmented(
            optimizers.make("adam", 0.01), segment_of(model), MULTS, cycle_momentum=True
        )
