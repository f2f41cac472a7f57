"""trainer.lr.optimizers: per-segment learning rates, checked against plain reference optimizers.

The reference for a segmented run is the same model trained with one *plain* optimizer of the
same class per segment, each with learning rate `mult * SGDR(step)` and applied only to its
segment's variables: the independent construction the segmented optimizer must reproduce.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from schedules import SGDR
from tests import helpers
from trainer.errors import UserError
from trainer.lr import keras_private, optimizers, segments

MULTS = (0.01, 0.1, 1.0)
STEPS = 24
BATCH = 8
# Short cycles so restarts happen inside the run (at steps 2 + 6 and 2 + 18).
SGDR_ARGS = dict(max_lr=0.05, first_cycle_steps=6, min_lr=1e-3, cycle_mult=2.0, warmup_steps=2)
OPTIMIZER_ARGS = {
    "sgd": {},
    "momentum": {},
    "nesterov": {},
    "adam": {},
    "adamw": {"weight_decay": 0.05},
    "rmsprop": {},
    "adagrad": {},
    "nadam": {},
}


class Scaled(keras.optimizers.schedules.LearningRateSchedule):
    """`mult * base(step)`: the learning rate a segment's reference optimizer runs at."""

    def __init__(self, base, mult, offset=0):
        self.base, self.mult, self.offset = base, mult, offset

    def __call__(self, step):
        return self.base(step + self.offset) * self.mult


def sgdr():
    return SGDR(**SGDR_ARGS)


def tiny_model(name="net"):
    """Dense 4->8->8->3 with fixed weights; one layer per segment (split_at = [1, 2])."""
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(8)]
        + [keras.layers.Dense(3)],
        name=name,
    )
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.weights])
    return model


def segment_of(model):
    return {v.path: i // 2 for i, v in enumerate(model.trainable_variables)}


def data(steps=STEPS):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(steps, BATCH, 4)).astype("float32")
    y = rng.normal(size=(steps, BATCH, 3)).astype("float32")
    return tf.constant(x), tf.constant(y)


def make_train(model, apply, strategy=None, variables=None, loss_scale=None):
    """Returns a tf.function running `apply(grads, vars)` once per step over data slices."""
    strategy = strategy or tf.distribute.get_strategy()
    variables = variables or model.trainable_variables

    def step_fn(x, y):
        with tf.GradientTape() as tape:
            per_example = tf.reduce_sum(tf.square(model(x) - y), axis=-1)
            loss = tf.reduce_sum(per_example) / BATCH  # averaged over the global batch
            if loss_scale is not None:
                loss = loss_scale(loss)
        apply(tape.gradient(loss, variables), variables)

    @tf.function
    def train(xs, ys):
        for i in tf.range(tf.shape(xs)[0]):
            if strategy.num_replicas_in_sync == 1:
                step_fn(xs[i], ys[i])
            else:
                half = BATCH // 2
                strategy.run(
                    step_fn,
                    args=(
                        _per_replica(strategy, xs[i], half),
                        _per_replica(strategy, ys[i], half),
                    ),
                )

    return train


def _per_replica(strategy, batch, half):
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: batch[ctx.replica_id_in_sync_group * half :][:half]
    )


def run_segmented(name, strategy=None, steps=STEPS, **seg_kw):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = tiny_model()
        base = optimizers.make(name, sgdr(), **OPTIMIZER_ARGS[name])
        opt = optimizers.segmented(base, segment_of(model), MULTS, **seg_kw)
        opt.build(model.trainable_variables)
    make_train(model, opt.apply, strategy)(*data(steps))
    return model, opt


def run_reference(name, strategy=None, steps=STEPS):
    """One plain optimizer per segment at lr = mult * SGDR(step), on that segment only."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = tiny_model("ref")
        plain = [optimizers.make(name, Scaled(sgdr(), m), **OPTIMIZER_ARGS[name]) for m in MULTS]
        parts = [model.trainable_variables[2 * s : 2 * s + 2] for s in range(len(MULTS))]
        for opt, part in zip(plain, parts):
            opt.build(part)

    def apply(grads, variables):
        for s, opt in enumerate(plain):
            opt.apply(grads[2 * s : 2 * s + 2], variables[2 * s : 2 * s + 2])

    make_train(model, apply, strategy)(*data(steps))
    return model


def assert_segments_equal(model, reference):
    initial = tiny_model("init").get_weights()
    for s in range(len(MULTS)):
        for i in (2 * s, 2 * s + 1):
            got, want = model.get_weights()[i], reference.get_weights()[i]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg=f"segment {s}")
            assert not np.array_equal(got, initial[i]), f"segment {s} did not move"


@pytest.fixture(scope="module")
def mirrored():
    return helpers.two_replicas()


@pytest.mark.parametrize("name", optimizers.OPTIMIZERS)
def test_each_segment_moves_like_its_reference_optimizer(name):
    assert sgdr().restart_steps(STEPS)[1:], "the run must include an SGDR restart"
    model, opt = run_segmented(name)
    assert int(opt.iterations.numpy()) == STEPS
    assert_segments_equal(model, run_reference(name))


@pytest.mark.parametrize("name", ["adam", "momentum", "adamw"])
def test_mirrored_matches_reference(name, mirrored):
    model, opt = run_segmented(name, mirrored)
    assert int(opt.iterations.numpy()) == STEPS  # once per step, not once per replica
    assert_segments_equal(model, run_reference(name, mirrored))
    # The summed per-replica gradients equal the one-device gradient up to rounding.
    single = run_reference(name)
    for got, want in zip(model.get_weights(), single.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["adam", "momentum"])
def test_aggregate_gradients_false_with_own_all_reduce(name, mirrored):
    with mirrored.scope():
        model = tiny_model()
        opt = optimizers.segmented(
            optimizers.make(name, sgdr()), segment_of(model), MULTS, aggregate_gradients=False
        )
        opt.build(model.trainable_variables)
        # Control: the default optimizer fed pre-summed gradients all-reduces them again.
        twice_model = tiny_model("twice")
        twice = optimizers.segmented(optimizers.make(name, sgdr()), segment_of(twice_model), MULTS)
        twice.build(twice_model.trainable_variables)

    def summed(opt):
        def apply(grads, variables):
            ctx = tf.distribute.get_replica_context()
            opt.apply(ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads), variables)

        return apply

    make_train(model, summed(opt), mirrored)(*data())
    make_train(twice_model, summed(twice), mirrored)(*data())
    assert int(opt.iterations.numpy()) == STEPS
    assert_segments_equal(model, run_reference(name, mirrored))
    if name == "momentum":  # plain SGD sees the doubled gradient; Adam barely notices it
        assert not np.allclose(twice_model.get_weights()[-2], model.get_weights()[-2], rtol=1e-3)


def test_gradient_scaling_is_wrong_for_adam():
    """Scaling Adam's gradient by 0.1 leaves the step ~unchanged: ~10x the lr-scaled step."""
    grad = tf.constant([0.3, -2.0, 5.0])
    moves = {}
    for how in ("lr", "grad"):
        var = keras.Variable([1.0, 1.0, 1.0], name=f"w_{how}")
        if how == "lr":
            opt = optimizers.segmented(keras.optimizers.Adam(0.01), {var.path: 0}, (0.1,))
            opt.apply([grad], [var])
        else:
            keras.optimizers.Adam(0.01).apply([grad * 0.1], [var])
        moves[how] = 1.0 - var.numpy()
    np.testing.assert_allclose(moves["lr"], 0.001 * np.sign(grad), rtol=1e-3)
    ratio = moves["grad"] / moves["lr"]
    assert np.all((ratio > 9.0) & (ratio < 10.5)), ratio


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_is_scaled_by_the_segment_lr(name):
    """Decoupled decay v -= v * wd * lr * mult, against a float32 numpy reference."""
    wd, schedule = 0.5, sgdr()
    variables = [keras.Variable(np.full(3, 2.0, "float32"), name=f"v{s}") for s in range(3)]
    opt = optimizers.segmented(
        optimizers.make(name, schedule, weight_decay=wd),
        {v.path: s for s, v in enumerate(variables)},
        MULTS,
    )
    # Adam with zero gradients moves by 0, so AdamW shows the decay alone; SGD adds -lr * g.
    grad = np.float32(0.0 if name == "adamw" else 0.25)
    want = [np.full(3, 2.0, "float32") for _ in MULTS]
    for step in range(20):
        opt.apply([tf.fill([3], grad)] * 3, variables)
        for s, mult in enumerate(MULTS):
            lr = np.float32(schedule(step).numpy()) * np.float32(mult)
            want[s] = want[s] - want[s] * np.float32(wd) * lr
            want[s] = want[s] - grad * lr
    for v, w in zip(variables, want):
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-6)
    assert want[2][0] < want[1][0] < want[0][0] < 2.0  # more decay at larger multipliers


def _slot_values(opt):
    return [v.numpy() for v in opt.variables]


@pytest.mark.parametrize("name", ["adam", "momentum"])
def test_checkpoint_restore_continues_exactly(name, tmp_path):
    xs, ys = data()
    model, opt = run_segmented(name, steps=10)
    saved_state = _slot_values(opt)
    path = tf.train.Checkpoint(optimizer=opt, model=model).save(str(tmp_path / "ckpt"))
    make_train(model, opt.apply)(xs[10:], ys[10:])  # straight through

    fresh = tiny_model("fresh")
    fresh.set_weights([np.zeros_like(w) for w in fresh.get_weights()])
    fresh_opt = optimizers.segmented(optimizers.make(name, sgdr()), segment_of(fresh), MULTS)
    fresh_opt.build(fresh.trainable_variables)
    tf.train.Checkpoint(optimizer=fresh_opt, model=fresh).restore(path)
    assert int(fresh_opt.iterations.numpy()) == 10
    restored = _slot_values(fresh_opt)
    assert len(restored) == len(saved_state) and len(restored) > 1
    for got, want in zip(restored, saved_state):
        np.testing.assert_array_equal(got, want)
    assert any(np.abs(s).sum() > 0 for s in restored[1:]), "slots should be non-zero"
    make_train(fresh, fresh_opt.apply)(xs[10:], ys[10:])
    for got, want in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert int(fresh_opt.iterations.numpy()) == STEPS


@pytest.mark.parametrize("where", ["one_device", "mirrored"])
def test_loss_scale_optimizer_matches_unwrapped(where, mirrored):
    strategy = mirrored if where == "mirrored" else tf.distribute.get_strategy()
    with strategy.scope():
        model = tiny_model()
        inner = optimizers.segmented(optimizers.make("adam", sgdr()), segment_of(model), MULTS)
        opt = keras.optimizers.LossScaleOptimizer(inner)
        opt.build(model.trainable_variables)
    make_train(model, opt.apply, strategy, loss_scale=opt.scale_loss)(*data())
    assert int(opt.iterations.numpy()) == STEPS
    unwrapped, _ = run_segmented("adam", strategy)
    for got, want in zip(model.get_weights(), unwrapped.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_build_all_then_apply_subset_then_unfreeze():
    """Built with every variable; segment 0 frozen for 8 steps, then trained with the rest."""
    frozen_steps, xs, ys = 8, *data()
    model = tiny_model()
    opt = optimizers.segmented(optimizers.make("momentum", sgdr()), segment_of(model), MULTS)
    opt.build(model.trainable_variables)
    initial = model.get_weights()
    make_train(model, opt.apply, variables=model.trainable_variables[2:])(
        xs[:frozen_steps], ys[:frozen_steps]
    )
    for got, want in zip(model.get_weights()[:2], initial[:2]):
        np.testing.assert_array_equal(got, want)
    assert optimizers.reset_slots(opt, model.trainable_variables[:2]) == 2
    make_train(model, opt.apply)(xs[frozen_steps:], ys[frozen_steps:])

    # Reference: plain momentum SGD per segment; segment 0 joins at step 8 with the schedule
    # at the global step (same shared `iterations` as the segmented optimizer).
    ref = tiny_model("ref")
    plain = [optimizers.make("momentum", Scaled(sgdr(), m)) for m in MULTS]
    late = optimizers.make("momentum", Scaled(sgdr(), MULTS[0], offset=frozen_steps))

    def apply_late(grads, variables):
        for s in (1, 2):
            plain[s].apply(grads[2 * s - 2 : 2 * s], variables[2 * s - 2 : 2 * s])

    def apply_all(grads, variables):
        late.apply(grads[:2], variables[:2])
        apply_late(grads[2:], variables[2:])

    make_train(ref, apply_late, variables=ref.trainable_variables[2:])(
        xs[:frozen_steps], ys[:frozen_steps]
    )
    make_train(ref, apply_all)(xs[frozen_steps:], ys[frozen_steps:])
    assert_segments_equal(model, ref)


@pytest.mark.parametrize("name", ["adam", "adagrad", "momentum"])
def test_reset_slots(name):
    model, opt = run_segmented(name, steps=3)
    before = {id(v): v.numpy() for v in opt.variables}
    n = optimizers.reset_slots(opt, model.trainable_variables[:2])
    slots = dict(keras_private.slot_lists(opt))
    assert n == 2 * len(slots) and n > 0
    initial = 0.1 if name == "adagrad" else 0.0  # Keras' initial_accumulator_value
    for per_variable in slots.values():
        for i, slot in enumerate(per_variable):
            if i < 2:
                np.testing.assert_array_equal(slot.numpy(), np.full(slot.shape, initial, "float32"))
            else:
                np.testing.assert_array_equal(slot.numpy(), before[id(slot)])
                assert np.abs(slot.numpy() - initial).sum() > 0
    assert int(opt.iterations.numpy()) == 3
    with pytest.raises(UserError, match="not built with variable"):
        optimizers.reset_slots(opt, [keras.Variable(1.0, name="stranger")])


def test_variable_outside_segment_of_names_its_path():
    model = tiny_model()
    seg = segment_of(model)
    del seg[model.trainable_variables[0].path]
    seg[model.trainable_variables[1].path] = 0
    opt = optimizers.segmented(optimizers.make("adam", 0.1), seg, MULTS)
    with pytest.raises(UserError, match=model.trainable_variables[0].path):
        opt.build(model.trainable_variables)
    opt.build(model.trainable_variables[1:])
    grads = [tf.ones_like(v) for v in model.trainable_variables]
    with pytest.raises(UserError, match=model.trainable_variables[0].path):
        opt.apply(grads, model.trainable_variables)


@pytest.mark.parametrize(
    "mults, match",
    [
        ((0.1, 1.0), "2 multipliers"),
        ((0.1, 0.5, 1.0, 1.0), "4 multipliers"),
        ((0.0, 0.5, 1.0), "> 0"),
        ((-1.0, 0.5, 1.0), "> 0"),
        ((math.nan, 0.5, 1.0), "finite"),
        ((math.inf, 0.5, 1.0), "finite"),
        ("0.1", "sequence"),
    ],
)
def test_bad_lr_mults(mults, match):
    model = tiny_model()
    with pytest.raises(UserError, match=match):
        optimizers.segmented(optimizers.make("sgd", 0.1), segment_of(model), mults)


def test_segmented_refuses_built_or_wrapped_optimizers():
    model = tiny_model()
    built = optimizers.make("adam", 0.1)
    built.build(model.trainable_variables)
    with pytest.raises(UserError, match="built"):
        optimizers.segmented(built, segment_of(model), MULTS)
    lso = keras.optimizers.LossScaleOptimizer(optimizers.make("adam", 0.1))
    with pytest.raises(UserError, match="LossScaleOptimizer"):
        optimizers.segmented(lso, segment_of(model), MULTS)


def test_get_config_round_trip():
    model = tiny_model()
    base = optimizers.make("adamw", sgdr(), weight_decay=0.01, clipnorm=2.0, beta_1=0.8)
    opt = optimizers.segmented(base, segment_of(model), MULTS, aggregate_gradients=False)
    config = opt.get_config()
    assert config["lr_mults"] == list(MULTS) and config["segment_of"] == segment_of(model)
    assert config["aggregate_gradients"] is False and config["beta_1"] == 0.8
    clone = type(opt).from_config(dict(config))  # Keras' from_config edits its argument
    assert clone.get_config() == config
    assert isinstance(clone, keras.optimizers.AdamW)
    assert float(clone.learning_rate) == pytest.approx(SGDR_ARGS["min_lr"])  # warmup step 0


def test_make_builds_each_named_optimizer():
    classes = {
        "sgd": keras.optimizers.SGD,
        "momentum": keras.optimizers.SGD,
        "nesterov": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "rmsprop": keras.optimizers.RMSprop,
        "adagrad": keras.optimizers.Adagrad,
        "nadam": keras.optimizers.Nadam,
    }
    for name, cls in classes.items():
        opt = optimizers.make(name, 0.5, momentum=0.8, weight_decay=0.01, clipnorm=1.0)
        assert type(opt) is cls, name
        assert opt.weight_decay == 0.01 and opt.global_clipnorm == 1.0, name
    assert optimizers.make("sgd", 1).momentum == 0.0
    assert optimizers.make("momentum", 0.1, momentum=0.8).momentum == 0.8
    assert optimizers.make("nesterov", 0.1).nesterov
    assert optimizers.make("rmsprop", 0.1, momentum=0.7).momentum == 0.7
    assert optimizers.make("adamw", 0.1).weight_decay == 0.004  # Keras' default
    assert optimizers.make("adam", 0.1, weight_decay=0.0).weight_decay is None
    with pytest.raises(UserError, match="unknown name 'adamx'.*adamw"):
        optimizers.make("adamx", 0.1)
    with pytest.raises(UserError, match="weight_decay=-1"):
        optimizers.make("adam", 0.1, weight_decay=-1.0)


def test_mults_from_spread():
    assert optimizers.mults_from_spread(1, 100.0) == (1.0,)
    np.testing.assert_allclose(optimizers.mults_from_spread(3, 100.0), (0.01, 0.1, 1.0))
    np.testing.assert_allclose(
        optimizers.mults_from_spread(5, 16.0), (1 / 16, 1 / 8, 1 / 4, 0.5, 1)
    )
    assert optimizers.mults_from_spread(4, 1.0) == (1.0,) * 4
    assert optimizers.mults_from_spread(2, 10.0)[-1] == 1.0
    for bad in [(0, 10.0), (3, 0.5), (3, math.inf), (2.5, 10.0)]:
        with pytest.raises(UserError):
            optimizers.mults_from_spread(*bad)


def _fit_data():
    rng = np.random.default_rng(2)
    return rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 3)).astype("float32")


def _fit_model(optimizer_fn, tmp_path):
    """A Sequential model compiled with a segmented optimizer, fit 4 steps, saved, reloaded."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="tanh", name="a")]
        + [keras.layers.Dense(3, name="b")],
        name="fitted",
    )
    opt = optimizers.segmented(optimizer_fn(), segments.assign(model, ["b"]), (0.1, 1.0))
    model.compile(optimizer=opt, loss="mse")
    x, y = _fit_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / "fitted.keras")
    model.save(path)
    return model, keras.saving.load_model(path)


def test_model_fit_save_load_keeps_the_segmented_optimizer(tmp_path):
    model, loaded = _fit_model(lambda: optimizers.make("adam", sgdr()), tmp_path)
    opt, got = model.optimizer, loaded.optimizer
    assert type(got).__name__ == "SegmentedAdam" and isinstance(got, keras.optimizers.Adam)
    assert keras.saving.get_registered_name(type(got)) == "lrtech>SegmentedAdam"
    config = got.get_config()
    assert config["segment_of"] == opt.get_config()["segment_of"]
    assert config["lr_mults"] == [0.1, 1.0] and config["aggregate_gradients"] is True
    assert isinstance(got.get_config()["learning_rate"], dict)  # the schedule, serialized
    assert config["learning_rate"] == opt.get_config()["learning_rate"]
    assert int(got.iterations.numpy()) == int(opt.iterations.numpy()) == 4
    assert len(got.variables) == len(opt.variables) == 1 + 2 * 4  # iterations, m and v
    for a, b in zip(opt.variables, got.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert np.abs(got.variables[-1].numpy()).sum() > 0, "slots should be non-zero"
    x, y = _fit_data()
    model.train_on_batch(x[:8], y[:8])
    loaded.train_on_batch(x[:8], y[:8])
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert int(got.iterations.numpy()) == 5


def test_multiplier_applies_after_load(tmp_path):
    """After load, segment "a" (x0.1) moves exactly 0.1 of what plain SGD moves it."""
    _, loaded = _fit_model(lambda: optimizers.make("sgd", 0.5), tmp_path)
    plain = keras.models.clone_model(loaded)
    plain.set_weights(loaded.get_weights())
    plain.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    before = loaded.get_weights()
    x, y = _fit_data()
    loaded.train_on_batch(x[:8], y[:8])
    plain.train_on_batch(x[:8], y[:8])
    for i, (start, got, want) in enumerate(zip(before, loaded.get_weights(), plain.get_weights())):
        mult = 0.1 if i < 2 else 1.0  # a/kernel, a/bias in segment 0
        np.testing.assert_allclose(got - start, mult * (want - start), rtol=1e-4, atol=1e-7)
        assert np.abs(want - start).max() > 1e-4


def test_segmented_classes_are_registered():
    for base in (
        keras.optimizers.SGD,
        keras.optimizers.RMSprop,
        keras.optimizers.Adam,
        keras.optimizers.AdamW,
        keras.optimizers.Adagrad,
        keras.optimizers.Nadam,
    ):
        cls = keras.saving.get_registered_object(f"lrtech>Segmented{base.__name__}")
        assert cls is not None and issubclass(cls, base), base
    # Any other class is registered when first segmented; a second class with the same
    # __name__ gets a module-qualified name instead of replacing the first.
    adam_like = type("Adam", (keras.optimizers.Adam,), {"__module__": "user.opts"})
    lion = optimizers.segmented(keras.optimizers.Lion(0.1), {"w": 0}, (1.0,))
    other = optimizers.segmented(adam_like(0.1), {"w": 0}, (1.0,))
    assert keras.saving.get_registered_name(type(lion)) == "lrtech>SegmentedLion"
    assert keras.saving.get_registered_name(type(other)) == "lrtech>user.opts.SegmentedAdam"
    for opt in (lion, other):
        clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
        assert type(clone) is type(opt) and clone.get_config() == opt.get_config()


def test_variable_paths_match_across_leading_scopes():
    variables = [keras.Variable(1.0, name=n) for n in ("x", "y")]
    # Saved from a model built under its name scope, rebuilt without it (or the reverse).
    seg = {f"net/{variables[0].path}": 0, variables[1].path: 1}
    opt = optimizers.segmented(keras.optimizers.SGD(1.0), seg, (0.5, 1.0))
    opt.apply([tf.constant(1.0), tf.constant(1.0)], variables)
    assert [float(v.numpy()) for v in variables] == [0.5, 0.0]
    twice = {f"a/{variables[0].path}": 0, f"b/{variables[0].path}": 1, variables[1].path: 1}
    opt = optimizers.segmented(keras.optimizers.SGD(1.0), twice, (0.5, 1.0))
    with pytest.raises(UserError, match="different segments"):
        opt.build(variables)
