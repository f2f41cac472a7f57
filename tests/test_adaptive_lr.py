"""trainer.lr.optimizers with `adaptive="rgn"` (Auto-RGN), checked against a NumPy reference.

The reference re-implements Keras' SGD / momentum SGD / Adam / AdamW update rules in float64
at the learning rate `m_i * lr_mults[segment] * SGDR(step)`, with m_i computed from the
definition (RGN_i = ||g_i|| / (||w_i|| + eps), m_i = max(floor, RGN_i / max_j RGN_j)). Each
step feeds the same gradients (computed by the model under test) to both, so rounding
differences do not feed back into the gradients.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_optimizers import BATCH, MULTS, data, make_train, sgdr, tiny_model
from trainer.errors import UserError
from trainer.loop.strategy import make_strategy
from trainer.lr import optimizers, segments
from trainer.lr import rgn as rgn_lib

STEPS = 8
OPTIMIZER_ARGS = {
    "sgd": {},
    "momentum": {"momentum": 0.9},
    "adam": {},
    "adamw": {"weight_decay": 0.1},
}


def segment_of(model):
    return {v.path: i // 2 for i, v in enumerate(model.trainable_variables)}


def adaptive(name, model, variables=None, mults=MULTS, **kw):
    kw.setdefault("adaptive", "rgn")
    base = optimizers.make(name, sgdr(), **OPTIMIZER_ARGS[name])
    opt = optimizers.segmented(base, segment_of(model), mults, **kw)
    opt.build(variables or model.trainable_variables)
    return opt


class Reference:
    """Keras' update rules in float64, each variable at m_i * static_i * lr(step).

    Args:
        name: "sgd", "momentum", "adam" or "adamw" (Keras defaults otherwise: momentum 0.9,
            beta_1 0.9, beta_2 0.999, epsilon 1e-7).
        weights: Initial weights.
        static: lr_mults of each variable's segment.
        groups: RGN group of each variable (the variable itself, or its layer).
        floor: adaptive_floor.
    """

    def __init__(self, name, weights, static, groups, floor):
        self.name, self.static, self.groups, self.floor = name, static, groups, floor
        self.w = [np.asarray(w, np.float64) for w in weights]
        self.m = [np.zeros_like(w) for w in self.w]
        self.v = [np.zeros_like(w) for w in self.w]
        self.wd = OPTIMIZER_ARGS[name].get("weight_decay", 0.0)

    def multipliers(self, grads, active):
        """m_i of each active variable (NaN for the others)."""
        gsq, wsq = {}, {}
        for i in active:
            g = self.groups[i]
            gsq[g] = gsq.get(g, 0.0) + np.sum(np.square(np.float64(grads[i])))
            wsq[g] = wsq.get(g, 0.0) + np.sum(np.square(self.w[i]))
        rgn = {g: math.sqrt(gsq[g]) / (math.sqrt(wsq[g]) + rgn_lib.RGN_EPSILON) for g in gsq}
        top = max(rgn.values())
        mults = [math.nan] * len(self.w)
        for i in active:
            mults[i] = max(self.floor, rgn[self.groups[i]] / top) if top > 0 else 1.0
        return mults

    def step(self, step, grads, active=None):
        """One update of the active variables at global step `step`; returns m_i."""
        active = range(len(self.w)) if active is None else active
        mults = self.multipliers(grads, active)
        base = float(sgdr()(step).numpy())
        t = step + 1
        for i in active:
            lr = base * self.static[i] * mults[i]
            g = np.float64(grads[i])
            if self.wd:
                self.w[i] = self.w[i] - self.w[i] * self.wd * lr
            if self.name == "sgd":
                self.w[i] = self.w[i] - g * lr
            elif self.name == "momentum":
                self.m[i] = self.m[i] * 0.9 - g * lr
                self.w[i] = self.w[i] + self.m[i]
            else:
                self.m[i] = self.m[i] + (g - self.m[i]) * (1 - 0.9)
                self.v[i] = self.v[i] + (g * g - self.v[i]) * (1 - 0.999)
                # Keras' bias correction in float32: 1 - 0.999**t loses digits to rounding.
                beta_1_power, beta_2_power = np.power(np.float32([0.9, 0.999]), np.float32(t))
                alpha = lr * math.sqrt(np.float32(1) - beta_2_power) / (1 - beta_1_power)
                self.w[i] = self.w[i] - self.m[i] * alpha / (np.sqrt(self.v[i]) + 1e-7)
        return mults


def segment_means(mults, segment_ids):
    means = []
    for s in range(max(segment_ids) + 1):
        values = [m for m, sid in zip(mults, segment_ids) if sid == s and not math.isnan(m)]
        means.append(sum(values) / len(values) if values else 0.0)
    return means


def loss_fn(model, x, y):
    return tf.reduce_sum(tf.square(model(x) - y)) / BATCH


def grad_step(model, opt, variables):
    """A compiled step: gradients of the loss, applied; returns the gradients."""

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(model, x, y)
        grads = tape.gradient(loss, variables)
        opt.apply(grads, variables)
        return grads

    return step


def check_against_reference(name, granularity="tensor", floor=0.0, frozen=0):
    """Trains STEPS steps with the first `frozen` segments frozen; returns every step's m."""
    model = tiny_model()
    variables = model.trainable_variables
    active = list(range(2 * frozen, len(variables)))
    train = [variables[i] for i in active]
    opt = adaptive(name, model, adaptive_floor=floor, adaptive_granularity=granularity)
    ids = [i // 2 for i in range(len(variables))]
    # tiny_model's layers are its segments: one Dense (kernel, bias) per segment.
    groups = ids if granularity == "layer" else list(range(len(variables)))
    initial = [v.numpy() for v in variables]
    ref = Reference(name, initial, [MULTS[s] for s in ids], groups, floor)
    step = grad_step(model, opt, train)
    xs, ys = data(STEPS)
    seen = []
    for k in range(STEPS):
        grads = [None] * len(variables)
        for i, g in zip(active, step(xs[k], ys[k])):
            grads[i] = g.numpy()
        want = ref.step(k, grads, active)
        seen.append(want)
        for i in active:
            np.testing.assert_allclose(
                variables[i].numpy(), ref.w[i], rtol=2e-6, atol=1e-7, err_msg=f"step {k}, var {i}"
            )
        np.testing.assert_allclose(opt.adaptive_multipliers(), segment_means(want, ids), rtol=1e-5)
    for i in range(2 * frozen):
        np.testing.assert_array_equal(variables[i].numpy(), initial[i])
    assert int(opt.iterations.numpy()) == STEPS
    return np.array(seen)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
def test_matches_numpy_reference(name):
    seen = check_against_reference(name)
    # The multipliers vary between variables and steps, and one variable leads each step.
    assert np.all(np.nanmax(seen, axis=1) == 1.0)
    assert np.nanmin(seen) < 0.5


def test_layer_granularity_matches_numpy_reference():
    seen = check_against_reference("adam", granularity="layer")
    assert np.array_equal(seen[:, 0::2], seen[:, 1::2])  # kernel and bias share m
    assert np.nanmin(seen) < 0.9


def test_floor_is_respected():
    floor = 0.35
    seen = check_against_reference("momentum", floor=floor)
    assert np.nanmin(seen) == floor, "the floor should bind at some step"
    free = check_against_reference("momentum")
    assert np.nanmin(free) < floor


def test_floor_binds_on_constructed_gradients():
    """Three variables of norm 2 whose RGNs are 1 : 0.5 : 0.01 of the largest, plain SGD."""
    variables = [keras.Variable(np.full(4, 1.0, "float32"), name=f"v{i}") for i in range(3)]
    opt = optimizers.segmented(
        keras.optimizers.SGD(1.0),
        {v.path: 0 for v in variables},
        (1.0,),
        adaptive="rgn",
        adaptive_floor=0.3,
    )
    grads = [tf.fill([4], g) for g in (0.2, 0.1, 0.002)]
    opt.apply(grads, variables)
    for v, g, m in zip(variables, (0.2, 0.1, 0.002), (1.0, 0.5, 0.3)):
        np.testing.assert_allclose(v.numpy(), 1.0 - g * m, rtol=1e-6)
    assert opt.adaptive_multipliers() == pytest.approx([(1.0 + 0.5 + 0.3) / 3])


def test_frozen_segment_is_untouched_and_reported_as_zero():
    # check_against_reference compares the report with 0.0 for the frozen segment 0.
    seen = check_against_reference("adamw", frozen=1)
    assert np.all(np.isnan(seen[:, :2])) and np.all(np.nanmax(seen, axis=1) == 1.0)


@pytest.mark.parametrize("name", ["momentum", "adamw"])
@pytest.mark.parametrize("granularity", ["tensor", "layer"])
def test_one_group_equals_the_plain_optimizer_bitwise(name, granularity):
    """One variable ("tensor") or one layer ("layer"): m = 1 at every step, bit for bit."""
    use_bias = granularity == "layer"
    xs, ys = data(STEPS)
    weights = {}
    for how in ("plain", "adaptive"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, use_bias=use_bias)])
        model.set_weights(
            [np.linspace(-1, 1, np.prod(w.shape)).reshape(w.shape) for w in model.weights]
        )
        if how == "plain":
            opt = optimizers.make(name, sgdr(), **OPTIMIZER_ARGS[name])
        else:
            seg = {v.path: 0 for v in model.trainable_variables}
            base = optimizers.make(name, sgdr(), **OPTIMIZER_ARGS[name])
            opt = optimizers.segmented(
                base, seg, (1.0,), adaptive="rgn", adaptive_granularity=granularity
            )
        opt.build(model.trainable_variables)
        step = grad_step(model, opt, model.trainable_variables)
        for k in range(STEPS):
            step(xs[k], ys[k])
        weights[how] = model.get_weights()
    assert opt.adaptive_multipliers() == [1.0]
    for got, want in zip(weights["adaptive"], weights["plain"], strict=True):
        np.testing.assert_array_equal(got, want)
        assert not np.allclose(got, np.linspace(-1, 1, got.size).reshape(got.shape))


def test_zero_gradients_give_multiplier_one():
    variables = [keras.Variable([1.0, 2.0], name="a"), keras.Variable([3.0], name="b")]
    opt = optimizers.segmented(
        keras.optimizers.SGD(0.1, momentum=0.9),
        {v.path: s for s, v in enumerate(variables)},
        (1.0, 1.0),
        adaptive="rgn",
    )
    opt.apply([tf.zeros([2]), tf.zeros([1])], variables)
    assert opt.adaptive_multipliers() == [1.0, 1.0]
    np.testing.assert_array_equal(variables[0].numpy(), [1.0, 2.0])


def test_sparse_gradient_norm_sums_duplicate_rows():
    """An Embedding's IndexedSlices gradient with repeated ids moves like its dense form."""
    results = []
    for dense in (False, True):
        model = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(5, 2)])
        model.add(keras.layers.Dense(1))
        model.set_weights(
            [np.linspace(0.1, 1, np.prod(w.shape)).reshape(w.shape) for w in model.weights]
        )
        seg = {v.path: 0 for v in model.trainable_variables}
        # Keras' own cross-replica sum densifies the gradient, its absence does not.
        opt = optimizers.segmented(
            keras.optimizers.SGD(0.5), seg, (1.0,), adaptive="rgn", aggregate_gradients=False
        )
        ids = tf.constant([[1, 1, 1], [1, 2, 4]])
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(ids))
        grads = tape.gradient(loss, model.trainable_variables)
        assert isinstance(grads[0], tf.IndexedSlices)
        if dense:
            grads = [tf.convert_to_tensor(g) for g in grads]
        opt.apply(grads, model.trainable_variables)
        results.append((model.get_weights(), opt.adaptive_multipliers()))
    (sparse_w, sparse_m), (dense_w, dense_m) = results
    assert sparse_m == pytest.approx(dense_m, rel=1e-6) and sparse_m[0] < 1.0
    for a, b in zip(sparse_w, dense_w):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.fixture(scope="module")
def mirrored():
    return make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])


def run_adaptive(name, strategy, steps=6, own_all_reduce=False, loss_scale=False):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = tiny_model()
        opt = inner = adaptive(name, model, aggregate_gradients=not own_all_reduce)
        if loss_scale:
            opt = keras.optimizers.LossScaleOptimizer(inner)
            opt.build(model.trainable_variables)
    apply = opt.apply
    if own_all_reduce:  # as trainer.loop does: sum across replicas, then apply

        def apply(grads, variables):
            context = tf.distribute.get_replica_context()
            opt.apply(context.all_reduce(tf.distribute.ReduceOp.SUM, grads), variables)

    scale = opt.scale_loss if loss_scale else None
    make_train(model, apply, strategy, loss_scale=scale)(*data(steps))
    assert int(opt.iterations.numpy()) == steps
    return model, inner


@pytest.mark.parametrize("own_all_reduce", [False, True], ids=["keras_sum", "own_sum"])
@pytest.mark.parametrize("name", ["adamw", "momentum"])
def test_two_replicas_equal_one_device(name, own_all_reduce, mirrored):
    model, opt = run_adaptive(name, mirrored, own_all_reduce=own_all_reduce)
    single, single_opt = run_adaptive(name, None)
    # Float sums over two replicas differ from one device's in the last bits.
    np.testing.assert_allclose(opt.adaptive_multipliers(), single_opt.adaptive_multipliers(), 1e-5)
    for got, want in zip(model.get_weights(), single.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_replica_local_gradients_would_give_other_multipliers():
    """The replica test has teeth: each replica's own half-batch RGNs differ from the sum's."""
    model = tiny_model()
    xs, ys = data(1)
    ids = list(range(6))
    ref = Reference("adam", [v.numpy() for v in model.trainable_variables], [1.0] * 6, ids, 0.0)

    def multipliers(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(model, x, y)
        grads = tape.gradient(loss, model.trainable_variables)
        return np.array(ref.multipliers([g.numpy() for g in grads], ids))

    whole = multipliers(xs[0], ys[0])
    half = BATCH // 2
    for r in range(2):
        local = multipliers(xs[0][r * half :][:half], ys[0][r * half :][:half])
        assert np.max(np.abs(local - whole)) > 0.02


@pytest.mark.parametrize("where", ["one_device", "mirrored"])
def test_loss_scale_optimizer_matches_unwrapped(where, mirrored):
    strategy = mirrored if where == "mirrored" else None
    model, opt = run_adaptive("adam", strategy, loss_scale=True)
    plain, plain_opt = run_adaptive("adam", strategy)
    np.testing.assert_allclose(opt.adaptive_multipliers(), plain_opt.adaptive_multipliers(), 1e-6)
    for got, want in zip(model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_checkpoint_has_no_adaptive_state_and_resumes_bitwise(tmp_path):
    xs, ys = data(STEPS)
    model = tiny_model()
    opt = adaptive("adam", model)
    step = grad_step(model, opt, model.trainable_variables)
    for k in range(4):
        step(xs[k], ys[k])
    path = tf.train.Checkpoint(optimizer=opt, model=model).save(str(tmp_path / "ckpt"))
    names = [name for name, _ in tf.train.list_variables(path)]
    assert not [n for n in names if "adaptive" in n]
    assert len([n for n in names if n.startswith("optimizer/_variables/")]) == 2 * 6
    for k in range(4, STEPS):
        step(xs[k], ys[k])

    fresh = tiny_model("fresh")
    fresh_opt = adaptive("adam", fresh)
    tf.train.Checkpoint(optimizer=fresh_opt, model=fresh).restore(path).assert_consumed()
    fresh_step = grad_step(fresh, fresh_opt, fresh.trainable_variables)
    for k in range(4, STEPS):
        fresh_step(xs[k], ys[k])
    for got, want in zip(fresh.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert fresh_opt.adaptive_multipliers() == opt.adaptive_multipliers()


def test_config_round_trip():
    model = tiny_model()
    base = optimizers.make("adamw", sgdr(), weight_decay=0.01)
    opt = optimizers.segmented(
        base, segment_of(model), MULTS, adaptive="rgn", adaptive_floor=0.25,
        adaptive_granularity="layer",
    )  # fmt: skip
    config = opt.get_config()
    assert config["adaptive"] == "rgn" and config["adaptive_floor"] == 0.25
    assert config["adaptive_granularity"] == "layer"
    clone = type(opt).from_config(dict(config))
    assert clone.get_config() == config
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is type(opt) and again.get_config() == config
    assert again.adaptive_multipliers() == [0.0, 0.0, 0.0]
    off = optimizers.segmented(optimizers.make("adam", 0.1), segment_of(model), MULTS)
    config = off.get_config()
    assert (config["adaptive"], config["adaptive_floor"], config["adaptive_granularity"]) == (
        None,
        0.0,
        "tensor",
    )
    with pytest.raises(UserError, match="adaptive=None"):
        off.adaptive_multipliers()


def test_model_fit_save_load(tmp_path):
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh", name="a")]
        + [keras.layers.Dense(3, name="b")],
        name="fitted",
    )
    seg = segments.assign(model, ["b"])
    opt = optimizers.segmented(
        optimizers.make("adam", sgdr()), seg, (0.1, 1.0), adaptive="rgn", adaptive_floor=0.1
    )
    model.compile(optimizer=opt, loss="mse")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 3)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert all(0.1 <= m <= 1.0 for m in opt.adaptive_multipliers())
    path = str(tmp_path / "fitted.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    got = loaded.optimizer
    assert got.get_config()["adaptive"] == "rgn" and got.get_config()["adaptive_floor"] == 0.1
    assert len(got.variables) == len(opt.variables) == 1 + 2 * 4  # iterations, m and v
    model.train_on_batch(x[:8], y[:8])
    loaded.train_on_batch(x[:8], y[:8])
    np.testing.assert_allclose(got.adaptive_multipliers(), opt.adaptive_multipliers(), 1e-6)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


ADAPTIVE_MUST = "Argument `adaptive` must be None or 'rgn'."
FLOOR_MUST = "Argument `adaptive_floor` must be in [0, 1]."


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adaptive": "RGN"}, f"{ADAPTIVE_MUST} Received: adaptive='RGN'"),
        ({"adaptive": True}, f"{ADAPTIVE_MUST} Received: adaptive=True"),
        ({"adaptive_floor": 2}, f"{FLOOR_MUST} Received: adaptive_floor=2"),
        ({"adaptive_floor": -0.1}, "Received: adaptive_floor=-0.1"),
        ({"adaptive_floor": math.nan}, "Received: adaptive_floor=nan"),
        ({"adaptive_floor": True}, "Received: adaptive_floor=True"),
        ({"adaptive_floor": "0.5"}, "Received: adaptive_floor='0.5'"),
        (
            {"adaptive_granularity": "block"},
            "Argument `adaptive_granularity` must be 'tensor' or 'layer'. "
            "Received: adaptive_granularity='block'",
        ),
    ],
)  # fmt: skip
def test_bad_arguments_raise_one_line(kwargs, message):
    model = tiny_model()
    kwargs = {"adaptive": "rgn", **kwargs}
    with pytest.raises(ValueError) as error:
        optimizers.segmented(optimizers.make("adam", 0.1), segment_of(model), MULTS, **kwargs)
    assert isinstance(error.value, UserError) and "\n" not in str(error.value)
    assert message in str(error.value)
    valid = optimizers.segmented(optimizers.make("adam", 0.1), segment_of(model), MULTS)
    with pytest.raises(UserError, match="Argument `adaptive"):  # from_config checks too
        type(valid).from_config({**valid.get_config(), **kwargs})
