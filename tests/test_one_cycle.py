"""Tests of schedules.OneCycle against plain-Python transcriptions of fastai and PyTorch."""

import inspect
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from schedules import OneCycle

FASTAI_DEFAULTS = dict(pct_start=0.25, div=25.0, div_final=1e5, moms=(0.95, 0.85, 0.95))


def fastai_one_cycle(step, max_lr, total_steps, **kwargs):
    """(lr, momentum) at `step`, transcribing fastai's `fit_one_cycle` hyper-parameter schedule.

    fastai: `combined_cos(pct, start, middle, end)` = `combine_scheds([pct, 1 - pct],
    [SchedCos(start, middle), SchedCos(middle, end)])` at `pos = step / total_steps`, with
    `SchedCos(start, end)(pos) = start + (1 + cos(pi * (1 - pos))) * (end - start) / 2`.
    Past the end (where fastai stops training) the final value is held.
    """
    kw = dict(FASTAI_DEFAULTS, **kwargs)
    pct, moms = kw["pct_start"], kw["moms"]

    def sched_cos(start, end, pos):
        return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2

    def combined_cos(start, middle, end, pos):
        if pos >= 1:
            return end
        pcts = [0.0, pct, 1.0]
        scheds = [(start, middle), (middle, end)]
        idx = max(i for i in range(2) if pos >= pcts[i])
        return sched_cos(*scheds[idx], (pos - pcts[idx]) / (pcts[idx + 1] - pcts[idx]))

    pos = max(step, 0) / total_steps
    lr = combined_cos(max_lr / kw["div"], max_lr, max_lr / kw["div_final"], pos)
    return lr, combined_cos(*moms, pos)


def pytorch_one_cycle(max_lr, total_steps, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
    """[(lr, momentum)] at steps 0 .. total_steps - 1: PyTorch's OneCycleLR (cos, two phases)."""
    initial = max_lr / div_factor
    phases = [
        (float(pct_start * total_steps) - 1, initial, max_lr, 0.95, 0.85),
        (total_steps - 1, max_lr, initial / final_div_factor, 0.85, 0.95),
    ]

    def anneal_cos(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    out = []
    for step in range(total_steps):
        start_step = 0.0
        for i, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                out.append((anneal_cos(lr0, lr1, pct), anneal_cos(m0, m1, pct)))
                break
            start_step = end_step
    return out


CONFIGS = {
    "t1_defaults": dict(max_lr=1e-3, total_steps=1),
    "t2_half": dict(max_lr=0.1, total_steps=2, pct_start=0.5, div=10.0, div_final=100.0),
    "t7_pct0.3_moms": dict(max_lr=0.01, total_steps=7, pct_start=0.3, moms=(0.9, 0.8, 0.99)),
    "t7_pct0.99": dict(max_lr=1e-3, total_steps=7, pct_start=0.99),
    "t100_defaults": dict(max_lr=3e-3, total_steps=100),
    "t100_torch_like": dict(max_lr=1.0, total_steps=100, pct_start=0.3, div_final=2.5e5),
    "t1000_finetune1": dict(max_lr=2e-3, total_steps=1000, pct_start=0.99),
    "t1000_finetune2": dict(max_lr=1e-3, total_steps=1000, pct_start=0.3, div=5.0),
    "t1000_pct0": dict(
        max_lr=5e-4, total_steps=1000, pct_start=0.0, div=1.0, div_final=1e4, moms=(0, 0.5, 0.25)
    ),
}


def assert_float32_close(got, want, what=""):
    """`got` (float32) is the float32 rounding of float64 `want`, or one ulp from it."""
    got = np.asarray(got)
    assert got.dtype == np.float32, got.dtype
    want32 = np.asarray(want, dtype=np.float64).astype(np.float32)
    off = np.abs(got.astype(np.float64) - want32.astype(np.float64))
    bad = off > np.spacing(np.abs(want32)).astype(np.float64)
    assert not bad.any(), (what, np.flatnonzero(bad)[:5], got[bad][:5], want32[bad][:5])


def _reference(cfg, steps):
    pairs = [fastai_one_cycle(s, **cfg) for s in steps]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_step_matches_fastai_reference(name):
    cfg = CONFIGS[name]
    schedule = OneCycle(**cfg)
    steps = list(range(cfg["total_steps"] + 6))
    want_lr, want_mom = _reference(cfg, steps)

    # A whole vector of steps, eagerly (int64) and in a tf.function (float64).
    vector = tf.constant(steps, tf.int64)
    assert_float32_close(schedule(vector).numpy(), want_lr, "lr int64 vector")
    assert_float32_close(schedule.momentum(vector).numpy(), want_mom, "momentum int64 vector")
    both = tf.function(lambda s: (schedule(s), schedule.momentum(s)))
    lr, mom = both(tf.constant(steps, tf.float64))
    assert_float32_close(lr.numpy(), want_lr, "lr float64 vector, tf.function")
    assert_float32_close(mom.numpy(), want_mom, "momentum float64 vector, tf.function")

    # One step at a time (every step of the short configs; the long ones' edges and a
    # sample, as eager calls are slow): a scalar float64 tensor in a tf.function, traced
    # once, and a Python int eagerly.
    total, peak = cfg["total_steps"], cfg.get("pct_start", 0.25) * cfg["total_steps"]
    edges = {0, 1, math.floor(peak) - 1, math.floor(peak), math.ceil(peak), math.ceil(peak) + 1}
    edges |= set(range(total - 2, total + 6)) | set(range(0, total, 37))
    for s in steps if total <= 100 else sorted(e for e in edges if e >= 0):
        lr, mom = both(tf.constant(s, tf.float64))
        assert_float32_close(lr.numpy(), want_lr[s], f"lr at {s}")
        assert_float32_close(mom.numpy(), want_mom[s], f"momentum at {s}")
        assert_float32_close(schedule(s).numpy(), want_lr[s], f"lr at int {s}")
        assert_float32_close(schedule.momentum(s).numpy(), want_mom[s], f"momentum at int {s}")
    assert both.experimental_get_tracing_count() == 2  # vector and scalar shapes


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_start_peak_and_end_values_are_exact(name):
    cfg = CONFIGS[name]
    kw = dict(FASTAI_DEFAULTS, **cfg)
    schedule = OneCycle(**cfg)
    max_lr, total, pct, moms = kw["max_lr"], kw["total_steps"], kw["pct_start"], kw["moms"]
    start_lr, start_mom = (max_lr / kw["div"], moms[0]) if pct > 0 else (max_lr, moms[1])
    assert schedule(0).numpy() == np.float32(start_lr)
    assert schedule.momentum(0).numpy() == np.float32(start_mom)
    peak = round(pct * total)
    if peak == pct * total:  # the peak lands on a step
        assert schedule(peak).numpy() == np.float32(max_lr)
        assert schedule.momentum(peak).numpy() == np.float32(moms[1])
    ends = [total, total + 1, total + 10**6, 2.0**60]
    np.testing.assert_array_equal(schedule(ends).numpy(), np.float32(max_lr / kw["div_final"]))
    np.testing.assert_array_equal(schedule.momentum(ends).numpy(), np.float32(moms[2]))
    # Every value lies between the final rate and the peak; the peak is the maximum.
    values = schedule(tf.range(total + 2)).numpy()
    assert values.max() <= np.float32(max_lr) == np.float32(schedule.peak_lr)
    assert values.min() >= np.float32(max_lr / max(kw["div"], kw["div_final"]))


def test_fastai_defaults_and_known_values():
    schedule = OneCycle(1e-3, 1000)
    assert schedule.get_config() == dict(
        max_lr=1e-3, total_steps=1000, name="OneCycle", **FASTAI_DEFAULTS
    )
    got = schedule([0, 125, 250, 625, 1000, 5000]).numpy()
    want = [4e-5, (4e-5 + 1e-3) / 2, 1e-3, (1e-3 + 1e-8) / 2, 1e-8, 1e-8]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(
        schedule.momentum([0, 125, 250, 625, 1000]), [0.95, 0.9, 0.85, 0.9, 0.95], rtol=1e-6
    )


@pytest.mark.parametrize(
    "max_lr, total_steps, pct_start", [(0.1, 100, 0.3), (0.01, 1000, 0.25), (1.0, 37, 0.3)]
)
def test_pytorch_one_cycle_lr_is_a_shifted_one_cycle(max_lr, total_steps, pct_start):
    # The docstring's mapping: PyTorch's phases end one step earlier, and its final lr is
    # max_lr / (div_factor * final_div_factor).
    want = pytorch_one_cycle(max_lr, total_steps, pct_start)
    schedule = OneCycle(
        max_lr,
        total_steps - 1,
        pct_start=(pct_start * total_steps - 1) / (total_steps - 1),
        div=25.0,
        div_final=25.0 * 1e4,
        moms=(0.95, 0.85, 0.95),
    )
    steps = tf.range(total_steps)
    assert_float32_close(schedule(steps).numpy(), [w[0] for w in want], "lr")
    assert_float32_close(schedule.momentum(steps).numpy(), [w[1] for w in want], "momentum")
    assert want[-1][0] == pytest.approx(max_lr / 2.5e5, rel=1e-12)  # PyTorch's last step


def test_fractional_and_negative_steps():
    cfg = CONFIGS["t100_defaults"]
    schedule = OneCycle(**cfg)
    steps = [0.5, 24.25, 24.999, 25.0, 25.5, 99.9, 99.999999, 100.0, 100.5]
    want_lr, want_mom = _reference(cfg, steps)
    assert_float32_close(schedule(steps).numpy(), want_lr)
    assert_float32_close(schedule(np.array(steps)).numpy(), want_lr)
    assert_float32_close(schedule.momentum(tf.constant(steps, tf.float64)).numpy(), want_mom)
    assert_float32_close(schedule(99.999999).numpy(), want_lr[6])  # no float32 step on the way
    assert schedule(-3).numpy() == schedule(0).numpy()  # negative steps count as step 0


def test_step_types_shapes_and_variable_in_tf_function():
    cfg = CONFIGS["t1000_finetune2"]
    schedule = OneCycle(**cfg)
    want = fastai_one_cycle(777, **cfg)
    for value in (
        777,
        777.0,
        np.int64(777),
        tf.constant(777, tf.int32),
        tf.constant(777.0, tf.float32),
        tf.Variable(777, dtype=tf.int64),
    ):
        assert_float32_close(schedule(value).numpy(), want[0], type(value))
        assert_float32_close(schedule.momentum(value).numpy(), want[1], type(value))
    grid = tf.reshape(tf.range(12, dtype=tf.int64) * 100, (3, 4))
    assert schedule(grid).shape == (3, 4) and schedule.momentum(grid).dtype == tf.float32

    variable = tf.Variable(0, dtype=tf.int64)
    fn = tf.function(lambda: (schedule(variable), schedule.momentum(variable)))
    for s in (0, 299, 300, 999, 1000, 10**9):
        variable.assign(s)
        lr, mom = fn()
        want = fastai_one_cycle(s, **cfg)
        assert_float32_close(lr.numpy(), want[0], s)
        assert_float32_close(mom.numpy(), want[1], s)
    assert fn.experimental_get_tracing_count() == 1


def test_get_config_has_every_constructor_argument_and_round_trips():
    cfg = dict(CONFIGS["t7_pct0.3_moms"], div=4.0, div_final=50.0, name="my_cycle")
    schedule = OneCycle(**cfg)
    config = schedule.get_config()
    assert set(config) == set(inspect.signature(OneCycle).parameters)
    assert config == cfg
    steps = tf.range(10)
    for clone in (
        OneCycle.from_config(config),
        keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule)),
        keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule)),
    ):
        assert isinstance(clone, OneCycle) and clone.get_config() == config
        np.testing.assert_array_equal(clone(steps).numpy(), schedule(steps).numpy())
        np.testing.assert_array_equal(clone.momentum(steps), schedule.momentum(steps))
    serialized = keras.saving.serialize_keras_object(schedule)
    assert serialized["registered_name"] == "lrtech>OneCycle"
    as_lists = dict(config, moms=list(config["moms"]))  # what JSON gives back
    assert OneCycle(**as_lists).get_config() == config


def test_model_fit_uses_schedule(tmp_path):
    cfg = dict(max_lr=0.05, total_steps=10, pct_start=0.3, div=5.0, div_final=100.0)
    schedule = OneCycle(**cfg)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    x = np.linspace(-1, 1, 32 * 3, dtype=np.float32).reshape(32, 3)
    y = x.sum(axis=1, keepdims=True)
    model.fit(x, y, batch_size=4, epochs=1, steps_per_epoch=7, verbose=0)  # 7 optimizer steps
    assert int(model.optimizer.iterations.numpy()) == 7
    assert float(model.optimizer.learning_rate) == float(schedule(7))
    assert_float32_close(model.optimizer.learning_rate.numpy(), fastai_one_cycle(7, **cfg)[0])

    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path).optimizer
    assert isinstance(loaded._learning_rate, OneCycle)
    assert loaded._learning_rate.get_config() == schedule.get_config()
    assert float(loaded.learning_rate) == float(schedule(7))


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        (dict(max_lr=0.0), "max_lr=0.0"),
        (dict(max_lr=-1e-3), "max_lr=-0.001"),
        (dict(max_lr=float("nan")), "max_lr=nan"),
        (dict(max_lr=float("inf")), "max_lr=inf"),
        (dict(max_lr="0.1"), "max_lr='0.1'"),
        (dict(total_steps=0), "total_steps=0"),
        (dict(total_steps=10.5), "total_steps=10.5"),
        (dict(total_steps=None), "total_steps=None"),
        (dict(pct_start=1.0), "pct_start=1.0"),
        (dict(pct_start=-0.1), "pct_start=-0.1"),
        (dict(pct_start=float("nan")), "pct_start=nan"),
        (dict(div=0.5), "div=0.5"),
        (dict(div=float("inf")), "div=inf"),
        (dict(div_final=0.0), "div_final=0.0"),
        (dict(div_final=float("inf")), "div_final=inf"),
        (dict(moms=(0.95, 0.85)), "moms=(0.95, 0.85)"),
        (dict(moms=(0.95, 1.0, 0.95)), "moms=(0.95, 1.0, 0.95)"),
        (dict(moms=(0.95, -0.1, 0.95)), "moms=(0.95, -0.1, 0.95)"),
        (dict(moms=(0.95, float("nan"), 0.95)), "moms=(0.95, nan, 0.95)"),
        (dict(moms=(0.95, True, 0.95)), "moms=(0.95, True, 0.95)"),
        (dict(moms=0.9), "moms=0.9"),
        (dict(name=3), "name=3"),
    ],
)
def test_invalid_arguments(kwargs, shown):
    args = dict(max_lr=0.1, total_steps=10)
    args.update(kwargs)
    name = next(iter(kwargs))
    with pytest.raises(ValueError) as info:
        OneCycle(**args)
    message = str(info.value)
    assert message.startswith(f"Argument `{name}` must be"), message
    assert message.endswith(f"Received: {shown}") and "\n" not in message, message
