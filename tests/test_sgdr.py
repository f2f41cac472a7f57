"""Tests of schedules.SGDR against an exact plain-Python reference (fractions)."""

import bisect
import inspect
import math
import os
from fractions import Fraction

import keras
import numpy as np
import pytest
import tensorflow as tf

from schedules import SGDR
from tests import helpers


class Reference:
    """SGDR computed the slow, obvious way: exact cycle starts as Fractions, float64 cosine."""

    def __init__(
        self,
        max_lr,
        first_cycle_steps,
        min_lr=0.0,
        cycle_mult=1.0,
        max_lr_decay=1.0,
        warmup_steps=0,
        horizon=5000,
    ):
        self.max_lr, self.min_lr, self.decay = max_lr, min_lr, max_lr_decay
        self.t0, self.m, self.warmup = (
            Fraction(first_cycle_steps),
            Fraction(cycle_mult),
            warmup_steps,
        )
        self.starts, self.lengths = [Fraction(0)], [self.t0]
        if self.m != 1:  # m == 1 uses floor division instead of a (possibly huge) table
            while self.starts[-1] <= horizon:
                self.starts.append(self.starts[-1] + self.lengths[-1])
                self.lengths.append(self.lengths[-1] * self.m)

    def cycle(self, u):
        """(k, B_k, T_k) of exact position u >= 0."""
        if self.m == 1:
            k = math.floor(u / self.t0)
            return k, k * self.t0, self.t0
        k = bisect.bisect_right(self.starts, u) - 1
        assert k < len(self.starts) - 1, "reference horizon too short"
        return k, self.starts[k], self.lengths[k]

    def lr(self, step):
        s = max(Fraction(step), 0)
        if s < self.warmup:
            return self.min_lr + (self.max_lr - self.min_lr) * float(s / self.warmup)
        k, start, length = self.cycle(s - self.warmup)
        t = float((s - self.warmup - start) / length)
        peak = max(self.min_lr, self.max_lr * self.decay**k)
        return self.min_lr + 0.5 * (peak - self.min_lr) * (1.0 + math.cos(math.pi * t))

    def restarts(self, total_steps):
        out = [
            s
            for s in range(self.warmup, total_steps)
            if s == self.warmup
            or self.cycle(s - self.warmup)[0] > self.cycle(s - 1 - self.warmup)[0]
        ]
        return out


def pytorch_warm_restarts(base_lr, t_0, t_mult, eta_min, num_steps):
    """PyTorch's documented CosineAnnealingWarmRestarts, stepped once per step (integer T_mult)."""
    lrs, t_cur, t_i = [], 0, t_0
    for _ in range(num_steps):
        lrs.append(eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
        t_cur += 1
        if t_cur >= t_i:
            t_cur -= t_i
            t_i *= t_mult
    return lrs


CONFIGS = {
    "plain_m1": dict(max_lr=0.1, first_cycle_steps=100),
    "double_min": dict(max_lr=1e-2, first_cycle_steps=100, min_lr=1e-4, cycle_mult=2.0),
    "m1.5_warmup_decay": dict(
        max_lr=0.5,
        first_cycle_steps=50,
        min_lr=0.01,
        cycle_mult=1.5,
        max_lr_decay=0.7,
        warmup_steps=37,
    ),
    "m3_frac_t0": dict(max_lr=1.0, first_cycle_steps=7.5, cycle_mult=3.0, warmup_steps=1),
    "m1.001_expm1": dict(max_lr=2e-3, first_cycle_steps=10, cycle_mult=1.001, max_lr_decay=0.99),
    "m1.1_floor": dict(max_lr=0.3, first_cycle_steps=13, min_lr=0.3, cycle_mult=1.1),
}


def _values(schedule, steps, dtype=tf.int64):
    return schedule(tf.constant(steps, dtype)).numpy().astype(np.float64)


def _assert_matches(schedule, ref, steps, dtype=tf.int64):
    got = _values(schedule, steps, dtype)
    want = np.array([ref.lr(s) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * ref.max_lr, err_msg=str(steps[:3]))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_step_matches_reference(name):
    cfg = CONFIGS[name]
    _assert_matches(SGDR(**cfg), Reference(**cfg), list(range(2001)))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_restart_boundaries_and_warmup_edges(name):
    cfg = CONFIGS[name]
    schedule, ref = SGDR(**cfg), Reference(**cfg)
    restarts = schedule.restart_steps(3000)
    assert restarts == ref.restarts(3000)
    w = cfg.get("warmup_steps", 0)
    steps = sorted({max(0, s + d) for s in restarts + [0, w] for d in (-1, 0, 1)})
    _assert_matches(schedule, ref, steps)
    for k, r in enumerate(restarts):  # cycle_at agrees; a cycle starting on a step is at its peak
        assert schedule.cycle_at(r) == k and (k == 0 or schedule.cycle_at(r - 1) == k - 1)
        if ref.cycle(Fraction(r - w))[1] == r - w:
            peak = max(ref.min_lr, ref.max_lr * ref.decay**k)
            assert float(schedule(r)) == pytest.approx(peak, rel=1e-6)


def test_warmup_is_linear_from_min_to_max():
    schedule = SGDR(max_lr=0.4, first_cycle_steps=10, min_lr=0.1, warmup_steps=3)
    np.testing.assert_allclose(_values(schedule, [0, 1, 2, 3]), [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    assert schedule.restart_steps(30) == [3, 13, 23]
    assert schedule.cycle_at(0) == 0 and schedule.cycle_at(12) == 0 and schedule.cycle_at(13) == 1


def _large_steps(t0, m, warmup, lo=10**6, hi=10**9, seed=0):
    ref = Reference(1.0, t0, cycle_mult=m, warmup_steps=warmup, horizon=2 * hi)
    bounds = [int(math.ceil(b)) + warmup for b in ref.starts if lo <= b + warmup <= hi]
    if m == 1:
        bounds = [k * t0 + warmup for k in (lo // t0 + 1, hi // t0 - 1, (2**30) // t0)]
    near = [b + d for b in bounds for d in (-2, -1, 0, 1)]
    rand = np.random.default_rng(seed).integers(lo, hi, size=200).tolist()
    return ref, sorted(set(near + rand + [lo, hi, 4_095_000, 2**30]))


@pytest.mark.parametrize(
    "t0, m, warmup", [(1000, 2.0, 0), (1000, 1.0, 0), (1000, 1.5, 5), (7, 3.0, 0)]
)
def test_large_steps_exact(t0, m, warmup):
    ref, steps = _large_steps(t0, m, warmup)
    schedule = SGDR(1.0, t0, cycle_mult=m, warmup_steps=warmup)
    _assert_matches(schedule, ref, steps, tf.int64)
    _assert_matches(schedule, ref, steps, tf.float64)
    _assert_matches(schedule, ref, [s for s in steps if s < 2**31], tf.int32)
    _assert_matches(schedule, ref, [s for s in steps if float(np.float32(s)) == s], tf.float32)
    for s in steps[::5]:  # restart_steps/cycle_at stay exact up there too
        assert schedule.cycle_at(s) == ref.cycle(s - warmup)[0]


def test_restart_at_4095000_where_keras_is_one_step_early():
    boundary = 1000 * (2**12 - 1)  # start of cycle 12 for T0=1000, cycle_mult=2
    schedule = SGDR(1.0, 1000, cycle_mult=2.0)
    keras_sched = keras.optimizers.schedules.CosineDecayRestarts(1.0, 1000, t_mul=2.0, alpha=0.0)
    before, at = float(schedule(boundary - 1)), float(schedule(boundary))
    assert before < 1e-9 and at == 1.0  # the end of cycle 11, then the restart
    assert float(keras_sched(boundary - 1)) == pytest.approx(1.0)  # Keras restarted early
    assert boundary in schedule.restart_steps(boundary + 1)
    assert boundary - 1 not in schedule.restart_steps(boundary + 1)


@pytest.mark.parametrize("t0, m, min_lr", [(100, 1.0, 0.0), (100, 2.0, 1e-3), (30, 3.0, 0.0)])
def test_agrees_with_keras_cosine_decay_restarts_below_1e5(t0, m, min_lr):
    max_lr = 0.1
    schedule = SGDR(max_lr, t0, min_lr=min_lr, cycle_mult=m)
    # A float64 initial rate makes Keras compute in float64, where it is exact away from
    # restarts; in its default float32 the cycle position alone is off by ~1e-4 at 1e5 steps.
    keras_sched = keras.optimizers.schedules.CosineDecayRestarts(
        tf.constant(max_lr, tf.float64), t0, t_mul=m, m_mul=1.0, alpha=min_lr / max_lr
    )
    steps = np.random.default_rng(1).integers(0, 10**5, size=2000)
    restarts = set(schedule.restart_steps(10**5 + 1))
    # Keras' floor(log(...)) may put a restart one step early; compare elsewhere.
    steps = np.array([s for s in steps if s not in restarts and s + 1 not in restarts])
    got = _values(schedule, steps)
    theirs = keras_sched(tf.constant(steps, tf.float64)).numpy()
    np.testing.assert_allclose(got, theirs, rtol=1e-6, atol=1e-9 * max_lr)


@pytest.mark.parametrize("t_0, t_mult, eta_min", [(10, 1, 0.0), (10, 2, 1e-3), (5, 3, 0.0)])
def test_agrees_with_pytorch_cosine_annealing_warm_restarts(t_0, t_mult, eta_min):
    base_lr, n = 0.05, 1500
    want = pytorch_warm_restarts(base_lr, t_0, t_mult, eta_min, n)
    got = _values(SGDR(base_lr, t_0, min_lr=eta_min, cycle_mult=float(t_mult)), list(range(n)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-10)


def test_step_types_eager_python_variable_and_tf_function():
    schedule = SGDR(0.1, 1000, cycle_mult=2.0)
    ref = Reference(0.1, 1000, cycle_mult=2.0, horizon=2 * 10**9)
    step = 4_095_000
    want = ref.lr(step)
    for value in (
        step,
        float(step),
        np.int64(step),
        tf.constant(step, tf.int32),
        tf.Variable(step, dtype=tf.int64),
        tf.Variable(float(step), dtype=tf.float64),
    ):
        assert float(schedule(value)) == pytest.approx(want, rel=1e-6), type(value)
    assert schedule(123456789.0).dtype == tf.float32  # Python float not squashed to float32
    assert float(schedule(123456789.0)) == pytest.approx(ref.lr(123456789), rel=1e-6)

    fn = tf.function(schedule)
    variable = tf.Variable(0, dtype=tf.int64)
    var_fn = tf.function(lambda: schedule(variable))
    for s in (0, 99_999, 4_094_999, 4_095_000, 1_048_575_000):
        assert float(fn(tf.constant(s, tf.int64))) == pytest.approx(ref.lr(s), rel=1e-6, abs=1e-12)
        variable.assign(s)
        assert float(var_fn()) == pytest.approx(ref.lr(s), rel=1e-6, abs=1e-12)
    assert fn.experimental_get_tracing_count() == 1


def test_mirrored_strategy_two_replicas():
    strategy = helpers.two_replicas()
    cfg = CONFIGS["m1.5_warmup_decay"]
    schedule, ref = SGDR(**cfg), Reference(**cfg)
    with strategy.scope():
        step = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def per_replica_lr():
        return strategy.run(lambda: schedule(step))

    for s in [0, 36, 37, 38] + schedule.restart_steps(2000)[1:4]:
        step.assign(s)
        values = [float(v) for v in strategy.experimental_local_results(per_replica_lr())]
        assert len(values) == 2
        assert values == pytest.approx([ref.lr(s)] * 2, rel=1e-6), s


def test_get_config_has_every_constructor_argument_and_round_trips():
    cfg = dict(CONFIGS["m1.5_warmup_decay"], name="my_sgdr")
    schedule = SGDR(**cfg)
    config = schedule.get_config()
    assert set(config) == set(inspect.signature(SGDR).parameters)
    assert config == cfg
    steps = list(range(0, 500, 7))
    clone = SGDR.from_config(config)
    np.testing.assert_array_equal(_values(clone, steps), _values(schedule, steps))
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(restored, SGDR) and restored.get_config() == config


def _tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    return model


def test_model_fit_uses_schedule_and_keras_model_round_trips(tmp_path):
    cfg = dict(max_lr=0.05, first_cycle_steps=4, min_lr=0.001, cycle_mult=2.0, warmup_steps=2)
    schedule, ref = SGDR(**cfg), Reference(**cfg)
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    x = np.linspace(-1, 1, 33 * 3, dtype=np.float32).reshape(33, 3)
    y = x.sum(axis=1, keepdims=True)
    model.fit(x, y, batch_size=4, epochs=1, steps_per_epoch=7, verbose=0)  # 7 optimizer steps
    assert int(model.optimizer.iterations.numpy()) == 7
    assert float(model.optimizer.learning_rate) == pytest.approx(ref.lr(7), rel=1e-6)

    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded_schedule = loaded.optimizer._learning_rate  # the schedule object itself
    assert isinstance(loaded_schedule, SGDR)
    assert loaded_schedule.get_config() == schedule.get_config()
    assert int(loaded.optimizer.iterations.numpy()) == 7
    assert float(loaded.optimizer.learning_rate) == pytest.approx(ref.lr(7), rel=1e-6)


def test_works_as_learning_rate_of_other_optimizers():
    schedule, ref = SGDR(0.01, 3), Reference(0.01, 3)
    for optimizer in (keras.optimizers.Adam(schedule), keras.optimizers.AdamW(schedule)):
        variable = keras.Variable([1.0, 2.0])
        for _ in range(4):
            optimizer.apply([tf.constant([0.5, -0.5])], [variable])
        assert float(optimizer.learning_rate) == pytest.approx(ref.lr(4), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        (dict(max_lr=0.0), "max_lr=0.0"),
        (dict(max_lr=-1.0), "max_lr=-1.0"),
        (dict(max_lr=float("nan")), "max_lr=nan"),
        (dict(max_lr=float("inf")), "max_lr=inf"),
        (dict(max_lr="0.1"), "max_lr='0.1'"),
        (dict(max_lr=True), "max_lr=True"),
        (dict(first_cycle_steps=0), "first_cycle_steps=0"),
        (dict(first_cycle_steps=0.5), "first_cycle_steps=0.5"),
        (dict(first_cycle_steps=None), "first_cycle_steps=None"),
        (dict(min_lr=-1e-3), "min_lr=-0.001"),
        (dict(min_lr=0.2), "min_lr=0.2"),
        (dict(min_lr=float("-inf")), "min_lr=-inf"),
        (dict(cycle_mult=0.99), "cycle_mult=0.99"),
        (dict(cycle_mult=float("nan")), "cycle_mult=nan"),
        (dict(max_lr_decay=0.0), "max_lr_decay=0.0"),
        (dict(max_lr_decay=1.5), "max_lr_decay=1.5"),
        (dict(warmup_steps=-1), "warmup_steps=-1"),
        (dict(warmup_steps=2.5), "warmup_steps=2.5"),
        (dict(warmup_steps=[3]), "warmup_steps=[3]"),
    ],
)
def test_invalid_arguments(kwargs, shown):
    args = dict(max_lr=0.1, first_cycle_steps=10)
    args.update(kwargs)
    name = next(iter(kwargs))
    with pytest.raises(ValueError) as info:
        SGDR(**args)
    message = str(info.value)
    assert message.startswith(f"Argument `{name}` must be") and message.endswith(
        f"Received: {shown}"
    )
    assert "\n" not in message


def test_a_vector_of_steps_gives_each_steps_rate_bit_for_bit():
    # TensorBoard's per-step learning-rate curve evaluates the schedule on a loop's steps at
    # once (trainer.lr.table.schedule_values); it must equal step-by-step calls exactly.
    import schedules
    from trainer.lr.table import schedule_values

    # Every 7th step, and each side of every warmup end (3, 10), peak (175), restart and
    # phase change (100, 300).
    edges = [2, 3, 4, 9, 10, 11, 99, 100, 101, 174, 175, 176, 299, 300, 301, 699]
    steps = np.unique(np.r_[np.arange(0, 700, 7), edges])
    for schedule in (
        SGDR(1e-2, 100, cycle_mult=2.0, min_lr=1e-5, warmup_steps=3, max_lr_decay=0.7),
        schedules.OneCycle(1e-2, 700),
        schedules.Cosine(1e-2, 700, warmup_steps=10),
        schedules.Phases(
            [(100, schedules.OneCycle(1e-2, 100)), (600, schedules.OneCycle(5e-3, 600))]
        ),
    ):
        one_by_one = [float(np.asarray(schedule(int(s)))) for s in steps]
        assert schedule_values(schedule, steps).tolist() == one_by_one
    assert schedule_values(0.5, [0, 3]).tolist() == [0.5, 0.5]
