"""trainer.lr_find and trainer.lr_find.callbacks.LRFinder: the learning-rate range test.

The suggestion rules are checked against plain-Python references written here from fastai's
definitions (loops over lists, not numpy); the smoothing against the explicit weighted mean
it equals; the custom loop against a hand-written SGD loop with per-segment learning rates;
the callback against the custom loop.
"""

import json
import math
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from schedules import SGDR
from tests import helpers
from trainer.lr import keras_private, optimizers
from trainer.lr_find import custom_loop
from trainer.lr_find import finder as lr_finder
from trainer.lr_find.callbacks import LRFinder
from trainer.lr_find.finder import ExponentialRange, LRFinderResult, RangeTest, suggestions

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
FEATURES, CLASSES, BATCH, BATCHES = 16, 3, 32, 8


def dataset():
    """8 batches of 32: 16 generated features, 3 classes a linear model can learn."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * BATCHES, FEATURES)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(FEATURES, CLASSES)), axis=1).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


def dense_model(hidden=False, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((FEATURES,))]
    if hidden:
        layers.append(keras.layers.Dense(8, activation="tanh", name="body"))
    layers.append(keras.layers.Dense(CLASSES, name="head"))
    return keras.Sequential(layers)


def stateful_model():
    """Weights, BatchNorm statistics and a Dropout seed generator: every kind of variable."""
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(CLASSES),
        ]
    )


def values(variables):
    return [np.array(v.numpy(), copy=True) for v in variables]


def assert_bitwise_equal(before, variables):
    after = values(variables)
    assert len(before) == len(after)
    for b, a in zip(before, after):
        assert b.dtype == a.dtype and b.tobytes() == a.tobytes()


# ---- Plain-Python references (fastai's definitions) ----------------------------------------


def ref_trim(xs):
    n = len(xs)
    return list(xs)[n // 10 : n - 5]


def ref_minimum(lrs, losses):
    best = 0
    for i in range(len(losses)):
        if losses[i] < losses[best]:
            best = i
    return lrs[best] / 10


def ref_steep(lrs, losses):
    best, best_slope = 0, math.inf
    for i in range(len(losses) - 1):
        slope = (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
        if slope < best_slope:
            best, best_slope = i, slope
    return lrs[best]


def ref_valley(lrs, losses):
    """fastai's double loop as written there (the -1 index clamped to 0, as documented)."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return lrs[max(0, max_start + int(sections) + int(sections / 2))]


def ref_slide(lrs, losses, lr_diff=15, thresh=0.005):
    n = len(losses)
    grad = [losses[1] - losses[0]]
    grad += [(losses[i + 1] - losses[i - 1]) / 2 for i in range(1, n - 1)]
    grad += [losses[n - 1] - losses[n - 2]]
    right, left = n - 1, n - 1 - lr_diff  # positive indices
    local_min_lr = lrs[left]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        local_min_lr = lrs[left]
        right, left = right - 1, left - 1
    return local_min_lr


def sweep_lrs(n=100, start=1e-7, end=10.0):
    return [start * (end / start) ** (i / n) for i in range(n)]


def u_curve(lrs):
    return [1.0 + 0.05 * (math.log10(lr) + 2.5) ** 2 for lr in lrs]


NOISE = np.random.default_rng(7).normal(0, 0.05, 100)
CURVES = {
    "u_shaped": u_curve(sweep_lrs()),
    "noisy": [v + float(e) for v, e in zip(u_curve(sweep_lrs()), NOISE)],
    "decreasing": list(np.linspace(3.0, 1.0, 100)),
    "increasing": list(np.linspace(1.0, 3.0, 100)),
}


@pytest.mark.parametrize("name", sorted(CURVES))
def test_suggestions_match_plain_python_references(name):
    lrs, losses = sweep_lrs(), [float(v) for v in CURVES[name]]
    got = suggestions(lrs, losses)
    tl, tv = ref_trim(lrs), ref_trim(losses)
    assert got == pytest.approx(
        {
            "valley": ref_valley(tl, tv),
            "steep": ref_steep(tl, tv),
            "minimum": ref_minimum(tl, tv),
            "slide": ref_slide(tl, tv),
        },
        rel=1e-12,
    )
    assert list(got) == ["valley", "steep", "minimum", "slide"]


def test_suggestions_on_known_curves():
    lrs = sweep_lrs()
    u = suggestions(lrs, CURVES["u_shaped"])
    # The U bottoms out at lr = 10**-2.5; the nearest sweep point is i = 56 (10**-2.52).
    assert u["minimum"] == pytest.approx(lrs[56] / 10)
    assert u["valley"] < lrs[56] and u["steep"] == lrs[10]  # steepest at the left edge
    down = suggestions(lrs, CURVES["decreasing"])
    # One valley over the whole trimmed curve (points 10..94): 85 points starting at -1.
    assert down["valley"] == lrs[10 + (-1 + int(86 / 3) + int(86 / 3 / 2))]
    assert down["minimum"] == pytest.approx(lrs[94] / 10)
    up = suggestions(lrs, CURVES["increasing"])
    assert up["valley"] == lrs[10] and up["minimum"] == pytest.approx(lrs[10] / 10)


def test_valley_and_steep_hand_computed():
    # Trimmed curve (26 points -> 2..20): 3, 1, 2, 1.5, 0.5 then rising. lds = 1, 2, 2, 3, 4,
    # 1, 1, ...: the valley ends at 4 and starts at 4 - 4 = 0; sections = 4/3; idx = 0+1+0.
    lrs = [10.0 ** (k / 4 - 6) for k in range(26)]
    trimmed = [3.0, 1.0, 2.0, 1.5, 0.5] + [5.0 + k for k in range(14)]
    losses = [9.0, 9.0] + trimmed + [50.0] * 5
    got = suggestions(lrs, losses)
    assert got["valley"] == lrs[2 + 1]
    assert got["steep"] == lrs[2 + 0]  # 3 -> 1 is the steepest fall (-2 per step)
    assert got["minimum"] == pytest.approx(lrs[2 + 4] / 10)
    assert lr_finder._valley(np.array([3.0, 1.0, 2.0, 1.5, 0.5, 4.0])) == 1
    assert lr_finder._valley(np.array([5.0, 4.0] + [6.0 + k for k in range(20)])) == 0  # fastai: -1


def test_suggestions_too_few_points():
    lrs = sweep_lrs(22)
    losses = u_curve(lrs)
    with pytest.raises(ValueError, match=r"too few steps.*--lr_find_start.*--lr_find_steps"):
        suggestions(lrs, losses)  # 22 - 2 - 5 = 15 points
    assert set(suggestions(sweep_lrs(23), u_curve(sweep_lrs(23)))) == {
        "valley",
        "steep",
        "minimum",
        "slide",
    }
    with pytest.raises(ValueError, match="one length"):
        suggestions(lrs, losses[:-1])


# ---- ExponentialRange and RangeTest --------------------------------------------------------


def test_exponential_range_every_step_and_config():
    schedule = ExponentialRange(1e-7, 10.0, 100)
    steps = np.arange(0, 131)
    expected = np.array([1e-7 * (1e8) ** (s / 100) for s in steps], dtype=np.float64)
    got = schedule(tf.constant(steps, tf.int64)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=2e-7, atol=0)
    assert float(schedule(0)) == np.float32(1e-7)
    assert float(schedule(100)) == pytest.approx(10.0, rel=1e-7)
    assert float(schedule(tf.constant(50.0, tf.float64))) == pytest.approx(1e-3, rel=1e-7)
    test = RangeTest(1e-7, 10.0, 100)
    assert [test.lr(int(s)) for s in steps] == pytest.approx(list(expected), rel=1e-15)
    config = schedule.get_config()
    assert config == {"start": 1e-7, "end": 10.0, "num_steps": 100, "name": "ExponentialRange"}
    assert ExponentialRange.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, ExponentialRange) and restored.get_config() == config


def ref_smoothed(losses, beta):
    """Debiased EMA written as the weighted mean it is: weights beta**(n-k) (1 - beta)."""
    n = len(losses)
    weights = [(1 - beta) * beta ** (n - 1 - k) for k in range(n)]
    return sum(w * v for w, v in zip(weights, losses)) / sum(weights)


def test_range_test_smoothing_and_stops():
    test = RangeTest(1e-3, 1.0, 50, beta=0.9)
    raw = [1.0, 2.0, 0.5, 0.8, 1.1, 0.9]
    for i, v in enumerate(raw):
        assert test.record(test.lr(i), v)
    assert test.losses[:3] == pytest.approx([1.0, 0.29 / 0.19, 0.311 / 0.271], rel=1e-12)
    assert test.losses == pytest.approx([ref_smoothed(raw[: k + 1], 0.9) for k in range(6)])
    assert test.raw_losses == raw and test.lrs == [test.lr(i) for i in range(6)]
    assert test.stop_reason is None

    test = RangeTest(1e-3, 1.0, 50, beta=0.0)  # no smoothing: the raw rule
    assert all(test.record(0.1, v) for v in [2.0, 1.0, 3.0, 4.0])  # 4.0 is not > 4 x 1.0
    assert not test.record(0.1, 4.01)
    assert test.stop_reason == "diverged" and test.losses[-1] == 4.01  # that point is kept

    test = RangeTest(1e-3, 1.0, 50)
    assert test.record(0.1, 1.0) and test.record(0.2, 1.0)
    assert not test.record(0.3, float("nan"))
    assert test.stop_reason == "non-finite loss" and len(test.losses) == 2  # NaN not kept
    with pytest.raises(RuntimeError, match="stopped"):
        test.record(0.4, 1.0)
    test = RangeTest(1e-3, 1.0, 50)
    assert not test.record(0.1, float("inf")) and test.stop_reason == "non-finite loss"

    test = RangeTest(1e-3, 1.0, 5)
    assert [test.record(test.lr(i), 1.0) for i in range(5)] == [True] * 4 + [False]
    assert test.stop_reason == "completed"
    result = test.result()
    assert result.suggestions == {} and result.stop_reason == "completed"
    with pytest.raises(ValueError, match="too few steps"):
        _ = result.suggested_max_lr
    assert result.format_line().startswith("no suggested --max_lr: ")


def test_range_test_diverges_when_smoothed_loss_exceeds_4x_its_minimum():
    test = RangeTest(1e-3, 1.0, 100)  # beta 0.98
    raw = [1.0] * 10 + [1.0 + 2.0**k for k in range(30)]
    smoothed, best = [], math.inf
    for n in range(1, len(raw) + 1):
        s = ref_smoothed(raw[:n], 0.98)
        smoothed.append(s)
        best = min(best, s)
        if s > 4 * best:
            break
    for v in raw[: len(smoothed)]:
        test.record(0.1, v)
    assert test.stop_reason == "diverged" and len(test.losses) == len(smoothed)
    assert test.losses == pytest.approx(smoothed, rel=1e-12)


BAD_ARGUMENTS = [
    (dict(start=0.0), "start"),
    (dict(start=float("nan")), "start"),
    (dict(end=1e-8), "end"),
    (dict(end=float("inf")), "end"),
    (dict(num_steps=4), "num_steps"),
    (dict(num_steps=10.5), "num_steps"),
    (dict(num_steps=True), "num_steps"),
    (dict(beta=1.0), "beta"),
    (dict(beta=-0.1), "beta"),
    (dict(diverge=1.0), "diverge"),
]


@pytest.mark.parametrize("kwargs,name", BAD_ARGUMENTS)
def test_bad_arguments_name_the_argument(kwargs, name):
    pattern = f"`{name}`.*Received: {name}="
    with pytest.raises(ValueError, match=pattern):
        RangeTest(**kwargs)
    with pytest.raises(ValueError, match=pattern):
        LRFinder(**kwargs)
    with pytest.raises(ValueError, match=pattern):
        custom_loop.lr_find(dense_model(), dataset(), keras.optimizers.SGD(), **kwargs)
    sweep = {k: v for k, v in kwargs.items() if k in ("start", "end", "num_steps")}
    if sweep:
        with pytest.raises(ValueError, match=pattern):
            ExponentialRange(**{"start": 1e-7, "end": 10.0, "num_steps": 100, **sweep})


# ---- lr_find in a custom loop ----------------------------------------------------------------


def test_lr_find_restores_every_variable_and_leaves_the_optimizer_alone():
    model = stateful_model()
    ds = dataset()
    user_opt = keras.optimizers.Adam(1e-3)
    user_opt.build(model.trainable_variables)
    x, y = next(iter(ds))
    with tf.GradientTape() as tape:
        loss = SCCE(y, model(x, training=True))
    user_opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    model_before, opt_before = values(model.variables), values(user_opt.variables)
    assert len(model.variables) == 9  # 2 + 4 (BatchNorm) + 2 + the dropout seed state
    unbuilt = keras.optimizers.SGD(0.1, momentum=0.9)

    result = custom_loop.lr_find(model, ds, user_opt, start=1e-4, end=1.0, num_steps=30)
    assert_bitwise_equal(model_before, model.variables)
    assert_bitwise_equal(opt_before, user_opt.variables)
    assert int(user_opt.iterations.numpy()) == 1
    assert result.stop_reason == "completed" and len(result.lrs) == 30
    assert result.lrs == [RangeTest(1e-4, 1.0, 30).lr(i) for i in range(30)]
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:]))
    assert len(set(result.raw_losses)) > 20  # the sweep did train (and was undone)
    assert set(result.suggestions) == {"valley", "steep", "minimum", "slide"}
    assert 1e-4 < result.suggested_max_lr < 1.0

    custom_loop.lr_find(model, ds, unbuilt, start=1e-4, end=1.0, num_steps=5)
    assert not unbuilt.built
    assert_bitwise_equal(model_before, model.variables)


class _Failing:
    """An iterable that yields `n` batches and then raises."""

    def __init__(self, ds, n):
        self.ds, self.n = ds, n

    def __iter__(self):
        for i, batch in enumerate(self.ds):
            if i == self.n:
                raise RuntimeError("data source failed")
            yield batch


def test_lr_find_restores_after_an_exception_and_reiterates_short_data():
    model = stateful_model()
    before = values(model.variables)
    with pytest.raises(RuntimeError, match="data source failed"):
        custom_loop.lr_find(model, _Failing(dataset(), 3), keras.optimizers.SGD(), num_steps=10)
    assert_bitwise_equal(before, model.variables)
    # 8 batches, 20 steps: the dataset is read again; a one-shot generator cannot be.
    result = custom_loop.lr_find(model, dataset(), keras.optimizers.SGD(), num_steps=20)
    assert len(result.lrs) == 20
    with pytest.raises(ValueError, match="no batches when iterated again after 8"):
        custom_loop.lr_find(model, iter(list(dataset())), keras.optimizers.SGD(), num_steps=20)
    assert_bitwise_equal(before, model.variables)


def test_lr_find_stops_early_on_divergence():
    result = custom_loop.lr_find(
        dense_model(), dataset(), keras.optimizers.SGD(0.1), start=1e-3, end=1e4, num_steps=60
    )
    assert result.stop_reason == "diverged" and len(result.lrs) < 60
    assert result.losses[-1] > 4 * min(result.losses[:-1])
    assert all(v <= 4 * min(result.losses[: k + 1]) for k, v in enumerate(result.losses[:-1]))
    assert result.suggested_max_lr < result.lrs[-1]


def test_lr_find_keeps_the_segment_multipliers():
    """A segmented SGD sweep equals a hand-written loop at lr(i) x mult per segment."""
    model = dense_model(hidden=True)

    def segment(v):
        return 0 if "body" in v.path else 1

    segment_of = {v.path: segment(v) for v in model.trainable_variables}
    mults = (1e-3, 1.0)
    opt = optimizers.segmented(keras.optimizers.SGD(0.5), segment_of, mults)
    sweep = custom_loop._sweep_optimizer(opt, ExponentialRange(1e-2, 10.0, 20))
    assert sweep.get_config()["lr_mults"] == list(mults)
    assert sweep.get_config()["segment_of"] == segment_of
    start = values(model.variables)
    result = custom_loop.lr_find(
        model, dataset(), opt, start=1e-2, end=10.0, num_steps=20, beta=0.0, diverge=math.inf
    )

    def reference(mults):
        ref = dense_model(hidden=True)
        ref.set_weights(start)
        losses = []
        for i, (x, y) in enumerate(list(dataset()) * 3):
            if i == 20:
                return losses
            lr = float(np.float32(RangeTest(1e-2, 10.0, 20).lr(i)))
            with tf.GradientTape() as tape:
                loss = SCCE(y, ref(x, training=True))
            grads = tape.gradient(loss, ref.trainable_variables)
            for v, g in zip(ref.trainable_variables, grads):
                v.assign_sub(lr * mults[segment(v)] * g)
            losses.append(float(loss))

    np.testing.assert_allclose(result.raw_losses, reference(mults), rtol=1e-5)
    assert not np.allclose(result.raw_losses, reference((1.0, 1.0)), rtol=1e-3)


def test_lr_find_under_mirrored_strategy_matches_one_device():
    ds = dataset()
    one = custom_loop.lr_find(dense_model(), ds, keras.optimizers.SGD(), start=1e-3, num_steps=12)
    strategy = helpers.two_replicas()
    with strategy.scope():
        model = dense_model()
    before = values(model.variables)
    two = custom_loop.lr_find(model, ds, keras.optimizers.SGD(), start=1e-3, num_steps=12)
    np.testing.assert_allclose(two.raw_losses, one.raw_losses, rtol=1e-5)
    assert_bitwise_equal(before, model.variables)


# ---- The model.fit callback -------------------------------------------------------------------


def compiled(optimizer, seed=0):
    model = dense_model(seed=seed)
    model.compile(optimizer=optimizer, loss=SCCE, jit_compile=False)
    return model


@pytest.mark.parametrize("kind", ["float", "schedule"])
def test_callback_equals_lr_find_and_restores_everything(kind):
    ds = dataset()
    schedule = SGDR(1e-3, 10)
    opt = keras.optimizers.Adam(1e-3 if kind == "float" else schedule)
    model = compiled(opt)
    model.fit(ds, epochs=1, verbose=0, shuffle=False)  # the optimizer now has state to restore
    model_before, opt_before = values(model.variables), values(opt.variables)
    iterations = int(opt.iterations.numpy())

    finder = LRFinder(start=1e-4, end=10.0, num_steps=20)
    history = model.fit(ds, epochs=10, callbacks=[finder], verbose=0, shuffle=False)
    assert len(history.epoch) == 3 and model.stop_training  # 8 + 8 + 4 batches
    assert_bitwise_equal(model_before, model.variables)
    assert_bitwise_equal(opt_before, opt.variables)
    assert int(opt.iterations.numpy()) == iterations == BATCHES
    # The custom loop on the same weights, data order and optimizer class.
    fresh = dense_model()
    fresh.set_weights(model.get_weights())
    expected = custom_loop.lr_find(fresh, ds, opt, start=1e-4, end=10.0, num_steps=20)
    got = finder.result
    assert got.stop_reason == "completed" and got.lrs == expected.lrs
    np.testing.assert_allclose(got.raw_losses, expected.raw_losses, rtol=1e-5)
    np.testing.assert_allclose(got.losses, expected.losses, rtol=1e-5)
    # The first recorded loss is the first batch's own loss at the initial weights.
    x, y = next(iter(ds))
    assert got.raw_losses[0] == pytest.approx(float(SCCE(y, fresh(x))), rel=1e-6)

    if kind == "float":
        assert float(opt.learning_rate.numpy()) == np.float32(1e-3)
    else:
        assert keras_private.learning_rate_object(opt) is schedule
        model.fit(
            ds.take(1), epochs=1, verbose=0, shuffle=False
        )  # the retraced step reads SGDR again
        assert float(opt.learning_rate) == pytest.approx(float(schedule(BATCHES + 1)))


def test_callback_stops_on_divergence_and_warns_when_fit_ends_first():
    ds = dataset()
    model = compiled(keras.optimizers.SGD(0.1))
    before = values(model.variables)
    finder = LRFinder(start=1e-3, end=1e4, num_steps=60)
    model.fit(ds, epochs=20, callbacks=[finder], verbose=0, shuffle=False)
    assert finder.result.stop_reason == "diverged" and len(finder.result.lrs) < 60
    assert model.stop_training
    assert_bitwise_equal(before, model.variables)

    finder = LRFinder(num_steps=30)
    with pytest.warns(UserWarning, match="fit ended after 16 of 30 batches"):
        model.fit(ds, epochs=2, callbacks=[finder], verbose=0, shuffle=False)
    assert finder.result.stop_reason == "incomplete" and len(finder.result.lrs) == 16
    assert_bitwise_equal(before, model.variables)


# ---- The result ---------------------------------------------------------------------------------


def make_result():
    lrs = sweep_lrs()
    return LRFinderResult(
        lrs=lrs,
        losses=u_curve(lrs),
        raw_losses=u_curve(lrs),
        suggestions=suggestions(lrs, u_curve(lrs)),
        stop_reason="completed",
        start=1e-7,
        end=10.0,
        num_steps=100,
        beta=0.98,
        diverge=4.0,
    )


def test_result_line_json_and_plot(tmp_path, monkeypatch):
    found = {"valley": 1.2e-3, "steep": 3e-3, "minimum": 4e-3, "slide": 2e-3}
    result = LRFinderResult([], [], [], found, "completed")
    line = "suggested --max_lr=0.0012 (valley; steep 0.003, minimum/10 0.004, slide 0.002)"
    assert result.format_line() == line and result.suggested_max_lr == 1.2e-3

    result = make_result()
    path = str(tmp_path / "lr_find.json")
    assert result.to_json(path) == path
    assert os.listdir(tmp_path) == ["lr_find.json"]  # no temporary file left
    with open(path) as f:
        data = json.load(f)
    assert data["lrs"] == result.lrs and data["suggestions"] == result.suggestions
    assert {k: data[k] for k in ("stop_reason", "start", "end", "num_steps", "beta")} == {
        "stop_reason": "completed",
        "start": 1e-7,
        "end": 10.0,
        "num_steps": 100,
        "beta": 0.98,
    }

    for name in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install -e \"\.\[plots\]\""):
        result.plot(str(tmp_path / "none.png"))
    monkeypatch.undo()
    pytest.importorskip("matplotlib")
    png = result.plot(str(tmp_path / "lr_find.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_public_names_load_from_the_package():
    import trainer.lr_find as package

    assert package.lr_find is custom_loop.lr_find
    assert package.LRFinder is LRFinder
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        package.nothing  # noqa: B018
