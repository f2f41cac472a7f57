"""Tests of schedules.Cosine and schedules.Phases against plain-Python references."""

import inspect
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from schedules import SGDR, Cosine, OneCycle, Phases
from tests.test_one_cycle import assert_float32_close, fastai_one_cycle


def cosine_reference(step, max_lr, total_steps, warmup_steps=0, min_lr=0.0):
    s, w = max(step, 0), warmup_steps
    if s >= total_steps:
        return min_lr
    if s < w:
        return min_lr + (max_lr - min_lr) * s / w
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * (s - w) / (total_steps - w)))


COSINE_CONFIGS = {
    "t1": dict(max_lr=1.0, total_steps=1),
    "t2_w1_min": dict(max_lr=3e-4, total_steps=2, warmup_steps=1, min_lr=1e-5),
    "t7_w3_min": dict(max_lr=0.5, total_steps=7, warmup_steps=3, min_lr=0.05),
    "t100_flat": dict(max_lr=0.01, total_steps=100, min_lr=0.01),
    "t1000_w100": dict(max_lr=0.1, total_steps=1000, warmup_steps=100),
    "t1000_w999_min": dict(max_lr=2e-3, total_steps=1000, warmup_steps=999, min_lr=2e-5),
}


@pytest.mark.parametrize("name", sorted(COSINE_CONFIGS))
def test_cosine_every_step_matches_reference_and_holds(name):
    cfg = COSINE_CONFIGS[name]
    schedule = Cosine(**cfg)
    total = cfg["total_steps"]
    steps = list(range(total + 6)) + [total + 10**6, 2**40]
    want = [cosine_reference(s, **cfg) for s in steps]
    assert_float32_close(schedule(tf.constant(steps, tf.int64)).numpy(), want, "int64 vector")
    fn = tf.function(schedule)
    assert_float32_close(fn(tf.constant(steps, tf.float64)).numpy(), want, "tf.function")
    for s in steps[:: max(1, len(steps) // 40)] + steps[-8:]:
        assert_float32_close(schedule(s).numpy(), cosine_reference(s, **cfg), s)
    w = cfg.get("warmup_steps", 0)
    assert schedule(w).numpy() == np.float32(cfg["max_lr"]) == np.float32(schedule.peak_lr)
    past = schedule([total, total + 1, 2.0**60]).numpy()
    np.testing.assert_array_equal(past, np.float32(cfg.get("min_lr", 0.0)))
    fractional = [0.5, w - 0.25, w + 0.5, total - 0.5, total - 1e-6]
    want = [cosine_reference(s, **cfg) for s in fractional]
    assert_float32_close(schedule(fractional).numpy(), want, "fractional steps")


@pytest.mark.parametrize("name", sorted(COSINE_CONFIGS))
def test_cosine_equals_sgdr_below_total_steps(name):
    cfg = COSINE_CONFIGS[name]
    w, total = cfg.get("warmup_steps", 0), cfg["total_steps"]
    sgdr = SGDR(cfg["max_lr"], total - w, min_lr=cfg.get("min_lr", 0.0), warmup_steps=w)
    cosine = Cosine(**cfg)
    for steps in (tf.range(total, dtype=tf.int64), tf.range(total, dtype=tf.float64) + 0.25):
        np.testing.assert_array_equal(cosine(steps).numpy(), sgdr(steps).numpy())
    # At total_steps SGDR restarts at max_lr; Cosine holds min_lr.
    assert sgdr(total).numpy() == np.float32(cfg["max_lr"])
    assert cosine(total).numpy() == np.float32(cfg.get("min_lr", 0.0))


def test_cosine_known_values_and_config_round_trip():
    schedule = Cosine(max_lr=0.1, total_steps=1000, warmup_steps=100)
    np.testing.assert_allclose(schedule([0, 50, 100, 550, 1000, 5000]), [0, 0.05, 0.1, 0.05, 0, 0])
    config = schedule.get_config()
    assert set(config) == set(inspect.signature(Cosine).parameters)
    assert config == dict(max_lr=0.1, total_steps=1000, warmup_steps=100, min_lr=0.0, name="Cosine")
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(schedule)))
    )
    assert isinstance(restored, Cosine) and restored.get_config() == config
    assert not hasattr(schedule, "momentum")


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        (dict(max_lr=0.0), "max_lr=0.0"),
        (dict(max_lr=float("nan")), "max_lr=nan"),
        (dict(total_steps=0), "total_steps=0"),
        (dict(total_steps=9.5), "total_steps=9.5"),
        (dict(warmup_steps=-1), "warmup_steps=-1"),
        (dict(warmup_steps=1.5), "warmup_steps=1.5"),
        (dict(warmup_steps=10), "warmup_steps=10"),
        (dict(min_lr=-1e-3), "min_lr=-0.001"),
        (dict(min_lr=0.2), "min_lr=0.2"),
        (dict(min_lr=float("inf")), "min_lr=inf"),
        (dict(name=["x"]), "name=['x']"),
    ],
)
def test_cosine_invalid_arguments(kwargs, shown):
    args = dict(max_lr=0.1, total_steps=10)
    args.update(kwargs)
    name = next(iter(kwargs))
    with pytest.raises(ValueError) as info:
        Cosine(**args)
    message = str(info.value)
    assert message.startswith(f"Argument `{name}` must be"), message
    assert message.endswith(f"Received: {shown}") and "\n" not in message, message


# ---- Phases -------------------------------------------------------------------------------

BASE_LR, FROZEN, UNFROZEN = 2e-3, 50, 200
ONE = dict(max_lr=BASE_LR, total_steps=FROZEN, pct_start=0.99)
TWO = dict(max_lr=BASE_LR / 2, total_steps=UNFROZEN, pct_start=0.3, div=5.0)


def fine_tune():
    return Phases([(FROZEN, OneCycle(**ONE)), (UNFROZEN, OneCycle(**TWO))])


def fine_tune_reference(step):
    """fastai's fine_tune: a frozen 1cycle, then an unfrozen one at half the rate."""
    if step < FROZEN:
        return fastai_one_cycle(step, **ONE)
    return fastai_one_cycle(step - FROZEN, **TWO)


def test_fine_tune_recipe_every_step():
    schedule = fine_tune()
    assert schedule.boundaries == [FROZEN] and schedule.total_steps == FROZEN + UNFROZEN
    assert schedule.peak_lr == BASE_LR
    steps = list(range(FROZEN + UNFROZEN + 10)) + [10**7]
    want = [fine_tune_reference(s) for s in steps]
    want_lr, want_mom = [w[0] for w in want], [w[1] for w in want]
    assert_float32_close(schedule(tf.constant(steps, tf.int64)).numpy(), want_lr, "lr")
    assert_float32_close(schedule.momentum(tf.constant(steps)).numpy(), want_mom, "momentum")
    both = tf.function(lambda s: (schedule(s), schedule.momentum(s)))
    lr, mom = both(tf.constant(steps, tf.float64))
    assert_float32_close(lr.numpy(), want_lr, "lr, tf.function")
    assert_float32_close(mom.numpy(), want_mom, "momentum, tf.function")
    # The edges: the frozen cycle is still near its peak (at step 49.5) on its last step 49;
    # the second cycle starts at (BASE_LR / 2) / 5 and peaks at step 50 + 0.3 * 200.
    assert schedule(FROZEN - 1).numpy() == pytest.approx(BASE_LR, rel=1e-3)
    assert schedule(FROZEN).numpy() == np.float32(BASE_LR / 10)
    assert schedule(FROZEN + 60).numpy() == np.float32(BASE_LR / 2)
    assert schedule.momentum(FROZEN).numpy() == np.float32(0.95)
    assert schedule.momentum(FROZEN + 60).numpy() == np.float32(0.85)

    variable = tf.Variable(0, dtype=tf.int64)
    fn = tf.function(lambda: (schedule(variable), schedule.momentum(variable)))
    for s in (0, 49, 50, 51, 110, 249, 250, 10**6):
        variable.assign(s)
        lr, mom = fn()
        assert_float32_close([lr.numpy(), mom.numpy()], fine_tune_reference(s), s)
    assert fn.experimental_get_tracing_count() == 1


def _mixed():
    return [
        (3, Cosine(0.1, 3, warmup_steps=1)),
        (20, SGDR(0.05, 6, min_lr=1e-3, cycle_mult=2.0)),
        (1, OneCycle(0.2, 1)),
        (10, keras.optimizers.schedules.CosineDecay(0.01, 10, alpha=0.1)),
    ]


def test_phases_against_inner_schedules_each_on_its_own_counter():
    phases = _mixed()
    schedule = Phases(phases)
    assert schedule.boundaries == [3, 23, 24] and schedule.total_steps == 34
    starts = [0] + schedule.boundaries
    steps = np.array(list(range(45)) + [1000])
    # Each inner schedule on its own counter, at every step, then the phase each step is in.
    own = [
        inner(tf.constant(np.maximum(steps - start, 0), tf.float64)).numpy()
        for start, (_, inner) in zip(starts, phases)
    ]
    phase = np.searchsorted(starts, steps, side="right") - 1
    want = np.choose(phase, own)
    assert (phase[[0, 2, 3, 22, 23, 24, 33, 34, 44]] == [0, 0, 1, 1, 2, 3, 3, 3, 3]).all()
    np.testing.assert_array_equal(schedule(tf.constant(steps)).numpy(), want)
    fn = tf.function(schedule)
    # Keras' CosineDecay computes in float32, where a graph may round differently.
    np.testing.assert_allclose(fn(tf.constant(steps, tf.float64)).numpy(), want, rtol=1e-6)
    for i in (0, 2, 3, 22, 23, 24, 33, 34, -1):
        np.testing.assert_allclose(schedule(int(steps[i])).numpy(), want[i], rtol=1e-6)
    single = Phases([(5, OneCycle(0.1, 5))])
    assert single.boundaries == [] and single.peak_lr == 0.1
    np.testing.assert_array_equal(single(tf.range(9)), OneCycle(0.1, 5)(tf.range(9)))


def test_phases_momentum_and_peak_lr_only_when_every_phase_has_them():
    schedule = Phases([(5, OneCycle(0.1, 5)), (5, Cosine(0.3, 5))])
    assert schedule.peak_lr == 0.3
    assert getattr(schedule, "momentum", None) is None and not hasattr(schedule, "momentum")
    with pytest.raises(AttributeError, match=r"phase 1 \(Cosine\) has no momentum"):
        schedule.momentum(0)
    keras_phase = Phases([(5, keras.optimizers.schedules.CosineDecay(0.5, 5))])
    with pytest.raises(AttributeError, match=r"phase 0 \(CosineDecay\) has no peak_lr"):
        keras_phase.peak_lr  # noqa: B018
    assert callable(fine_tune().momentum)


def test_phases_config_round_trip_and_model_fit_save_load(tmp_path):
    schedule = Phases(_mixed(), name="mixed")
    config = schedule.get_config()
    assert set(config) == set(inspect.signature(Phases).parameters)
    assert [n for n, _ in config["phases"]] == [3, 20, 1, 10]
    assert config["phases"][0][1]["registered_name"] == "lrtech>Cosine"
    as_json = json.loads(json.dumps(keras.saving.serialize_keras_object(schedule)))
    steps = tf.range(40)
    for clone in (Phases.from_config(config), keras.saving.deserialize_keras_object(as_json)):
        assert isinstance(clone, Phases) and clone.get_config() == config
        np.testing.assert_array_equal(clone(steps).numpy(), schedule(steps).numpy())

    recipe = Phases([(4, OneCycle(0.05, 4, pct_start=0.99)), (8, OneCycle(0.025, 8, div=5.0))])
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=recipe, momentum=0.9), loss="mse")
    x = np.linspace(-1, 1, 24 * 3, dtype=np.float32).reshape(24, 3)
    model.fit(x, x.sum(axis=1), batch_size=4, epochs=1, steps_per_epoch=6, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 6
    want = fastai_one_cycle(6 - 4, 0.025, 8, div=5.0)[0]
    assert_float32_close(model.optimizer.learning_rate.numpy(), want)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path).optimizer
    assert isinstance(loaded._learning_rate, Phases)
    assert loaded._learning_rate.get_config() == recipe.get_config()
    assert float(loaded.learning_rate) == float(recipe(6))


@pytest.mark.parametrize(
    "phases, name, shown",
    [
        ([], "phases", "phases=[]"),
        (None, "phases", "phases=None"),
        ("abc", "phases", "phases='abc'"),
        ([5], "phases[0]", "phases[0]=5"),
        ([(5,)], "phases[0]", "phases[0]=(5,)"),
        ([(0, "S")], "phases[0][0]", "phases[0][0]=0"),
        ([(5, "S"), (2.5, "S")], "phases[1][0]", "phases[1][0]=2.5"),
        ([(5, "S"), (5, 0.1)], "phases[1][1]", "phases[1][1]=0.1"),
    ],
)
def test_phases_invalid_arguments(phases, name, shown):
    schedule = OneCycle(0.1, 5)
    if isinstance(phases, list):
        phases = [
            tuple(schedule if v == "S" else v for v in p) if isinstance(p, tuple) else p
            for p in phases
        ]
    with pytest.raises(ValueError) as info:
        Phases(phases)
    message = str(info.value)
    assert message.startswith(f"Argument `{name}` must be"), message
    assert message.endswith(f"Received: {shown}") and "\n" not in message, message
