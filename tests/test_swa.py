"""SWA and snapshot ensembles in a run: the schedule switch, the plan, the average, BN, resume.

The runs are helpers.BN_RUN (test_checkpoints' run) with a *synchronized* BatchNorm in the model,
so that 2 replicas train exactly like 1 device (global batch statistics), on synthetic data:
12 steps of 16 examples, 4 steps per epoch, SGDR cycles of 3 steps (cycle ends 3, 6, 9, 12).
"""

import json
import os
import signal
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import schedules
from schedules.swa import SWALR
from tests import helpers
from tests.helpers import bn_config as config
from trainer.averaging import weight_averaging
from trainer.averaging.weights import averaged_weights, batch_norm_layers
from trainer.errors import IncompatibleCheckpointError, Preempted, UserError
from trainer.loop.steps import Plan
from trainer.reporting import console, summaries
from trainer.run_dir import checkpoints

EPSILON = 1e-3  # Keras' BatchNormalization default


def sync_bn_model(num_classes):
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 255.0),
            # No bias before BN: its gradient is round-off alone, which Adam scales up to lr.
            keras.layers.Conv2D(4, 3, use_bias=False, name="conv"),
            keras.layers.BatchNormalization(synchronized=True, name="bn"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, name="head"),
        ]
    )


# All three averagings: SWA at the cycle ends from epoch 1 (steps 6, 9, 12), EMA, and the
# ensemble of the last 2 snapshots (after the restarts at 6 and 9, and at the end).
AVERAGING = dict(
    first_cycle_steps=3,
    cycle_mult=1.0,
    swa_start_epoch=1.0,
    ema_decay=0.8,
    ensemble_snapshots=2,
    steps_per_loop=2,
    checkpoint_every_steps=1000,
)


def build(cfg, strategy=None):
    return helpers.build(cfg, sync_bn_model, strategy)


def run(cfg, strategy=None, signal_after_call=None):
    """Builds, restores and trains; records the weights at every SWA update."""
    exp = build(cfg, strategy)
    exp.restore()
    collected = []
    update = exp.averaging.average.update

    def recording_update():
        collected.append([v.numpy() for v in averaged_weights(exp.model)])
        update()

    exp.averaging.average.update = recording_update
    if signal_after_call:
        train, calls = exp.trainer.train, []

        def train_then_signal(num_steps):
            out = train(num_steps)
            calls.append(1)
            if len(calls) == signal_after_call:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        exp.trainer.train = train_then_signal
    return exp, exp.train, collected


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("swa") / "straight"
    exp, train, collected = run(config(model_dir, **AVERAGING))
    metrics = train()
    exp.export()
    return exp, metrics, collected


# SWALR -------------------------------------------------------------------------------------


def test_swalr_switches_exactly_at_the_start_step():
    inner = schedules.SGDR(0.1, 7, min_lr=0.001, cycle_mult=1.5, warmup_steps=2)
    schedule = SWALR(inner, start_step=20, swa_lr=0.005)
    steps = [0, 1, 2, 8, 19, 19.5, 20, 20.5, 21, 10**7, 2.0**40]
    for s in steps:
        expected = np.float32(0.005) if s >= 20 else np.asarray(inner(s))
        assert np.asarray(schedule(s)) == expected, s  # bit for bit
    batch = np.asarray(schedule(tf.constant(steps, tf.float64)))
    np.testing.assert_array_equal(batch, [np.asarray(schedule(s)) for s in steps])
    assert np.asarray(schedule(tf.Variable(25, dtype=tf.int64))) == np.float32(0.005)
    assert schedule.peak_lr == 0.1 and SWALR(0.001, 5, 0.01).peak_lr == 0.01
    # A constant before the switch; the round trip through Keras' serialization.
    constant = SWALR(0.02, start_step=0, swa_lr=0.01)
    assert np.asarray(constant(0)) == np.float32(0.01)
    for original in (schedule, constant, SWALR(0.02, 3, 0.01)):
        again = keras.saving.deserialize_keras_object(
            json.loads(json.dumps(keras.saving.serialize_keras_object(original)))
        )
        assert type(again) is SWALR and again.get_config()["start_step"] == original.start_step
        for s in (0, 2, 3, 19, 20, 100):
            assert np.asarray(again(s)) == np.asarray(original(s))
    assert set(schedule.get_config()) == {"schedule", "start_step", "swa_lr", "name"}


def test_swalr_momentum_holds_after_the_switch_and_bad_arguments():
    cycle = schedules.OneCycle(0.1, 100)
    schedule = SWALR(cycle, start_step=60, swa_lr=0.01)
    for s in (0, 30, 59, 60):
        assert np.asarray(schedule.momentum(s)) == np.asarray(cycle.momentum(s))
    for s in (61, 99, 1000):
        assert np.asarray(schedule.momentum(s)) == np.asarray(cycle.momentum(60))
    with pytest.raises(AttributeError, match="no momentum"):
        SWALR(schedules.SGDR(0.1, 10), 5, 0.01).momentum  # noqa: B018
    for kwargs, message in [
        (dict(schedule=0.1, start_step=5, swa_lr=0.0), "`swa_lr` must be > 0. Received: swa_lr=0"),
        (dict(schedule=0.1, start_step=-1, swa_lr=0.1), "`start_step` must be >= 0"),
        (dict(schedule=0.1, start_step=2.5, swa_lr=0.1), "`start_step` must be an integer"),
        (dict(schedule="fast", start_step=2, swa_lr=0.1), "`schedule` must be a number"),
        (dict(schedule=-1.0, start_step=2, swa_lr=0.1), "`schedule` must be a Learning"),
    ]:
        with pytest.raises(ValueError, match=message):
            SWALR(**kwargs)


# The plan ----------------------------------------------------------------------------------


def _plan(total, steps_per_epoch=4):
    return Plan(steps_per_epoch, total, 3, steps_per_epoch, None, 1000, 50)


def test_swa_steps():
    sgdr = schedules.SGDR(0.1, 3, cycle_mult=2.0)  # cycles end at 3, 9, 21
    cfg = config("/x", swa_start_epoch=0.75)  # step 3
    assert weight_averaging.cycle_ends(sgdr, 21) == [3, 9, 21]
    assert weight_averaging.cycle_ends(sgdr, 20) == [3, 9]
    assert weight_averaging.swa_steps(cfg, _plan(21), sgdr) == [3, 9, 21]
    assert weight_averaging.swa_steps(cfg.replace(swa_start_epoch=1), _plan(21), sgdr) == [9, 21]
    # A constant rate (--swa_lr, or another schedule): every --swa_every_epochs, and the end.
    every = cfg.replace(swa_start_epoch=1.0, swa_lr=0.01)
    assert weight_averaging.swa_steps(every, _plan(14), sgdr) == [8, 12, 14]
    half = every.replace(schedule="cosine", swa_lr=None, swa_every_epochs=0.5)
    assert weight_averaging.swa_steps(half, _plan(12), sgdr) == [6, 8, 10, 12]


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(swa_start_epoch=3.0), "--swa_start_epoch=3 is step 12, at or after the end"),
        (dict(swa_start_epoch=2.5), "no SGDR cycle ends between it and the end of the run"),
        (dict(ensemble_snapshots=3), "--ensemble_snapshots=3: the run ends only 2 SGDR cycles"),
        (dict(ensemble_snapshots=2, schedule="cosine", first_cycle_steps=None), "use --schedule"),
    ],
)
def test_settings_that_do_not_fit_the_run_are_user_errors(tmp_path, kw, message):
    # 12 steps; cycles of 3 and 6 steps end at 3 and 9.
    with pytest.raises(UserError, match=message):
        build(config(tmp_path, **kw))


def test_swa_lr_switches_every_segment_keeping_the_multipliers(tmp_path):
    exp = build(config(tmp_path, swa_start_epoch=1.5, swa_lr=0.002, swa_every_epochs=0.5))
    assert exp.averaging.swa_steps == [8, 10, 12]  # start at step 6, every 2 steps
    schedule = exp.optimizer.learning_rate  # evaluated at the optimizer's step
    assert float(schedule) == pytest.approx(0.01)  # SGDR's peak at step 0
    base = float(exp.schedule(5))
    assert exp.learning_rates(5) == pytest.approx([0.1 * base, base])
    assert exp.learning_rates(6) == pytest.approx([0.0002, 0.002])
    assert exp.learning_rates(10**6) == pytest.approx([0.0002, 0.002])
    assert "0.01" in exp.lr_table()  # the peak is still SGDR's


def test_resuming_with_other_averaging_settings_is_refused(tmp_path):
    cfg = config(tmp_path)
    checkpoints.write_config(str(tmp_path), build(cfg).config)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "ckpt-3.index").write_bytes(b"")  # only the compatibility check runs
    with pytest.raises(IncompatibleCheckpointError, match="--swa_start_epoch=none -> 1.0"):
        build(cfg.replace(swa_start_epoch=1.0)).restore()
    with pytest.raises(IncompatibleCheckpointError, match="--ema_decay=none -> 0.9"):
        build(cfg.replace(ema_decay=0.9)).restore()
    # A config.json from before these settings existed: made without them.
    record = json.loads((tmp_path / "config.json").read_text())
    del record["swa_start_epoch"], record["ema_decay"]
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(IncompatibleCheckpointError, match="--ema_decay"):
        build(cfg.replace(ema_decay=0.9)).restore()
    assert (tmp_path / "ckpt" / "ckpt-3.index").exists()  # nothing moved aside


# The run -----------------------------------------------------------------------------------


def _conv_bn_statistics(model, batches):
    """NumPy: the mean over batches of the conv output's batch mean and (biased) variance."""
    (kernel,) = (w.numpy().astype(np.float64) for w in model.get_layer("conv").weights)
    means, variances = [], []
    for x in batches:
        windows = np.lib.stride_tricks.sliding_window_view(x / 255.0, (3, 3), axis=(1, 2))
        h = np.einsum("bijcuv,uvco->bijo", windows, kernel)
        means.append(h.mean((0, 1, 2)))
        variances.append(h.var((0, 1, 2)))
    return np.mean(means, 0), np.mean(variances, 0)


def test_swa_weights_bn_statistics_metrics_and_export(straight):
    exp, metrics, collected = straight
    averaging = exp.averaging
    assert averaging.swa_steps == [6, 9, 12] and len(collected) == 3
    swa_model, record = averaging._models["swa"]
    # The average is the mean of the collected weights; the SWA model holds it.
    for i, (average, weight) in enumerate(
        zip(averaging.average.averages, averaged_weights(swa_model))
    ):
        mean = np.mean([c[i] for c in collected], axis=0)
        np.testing.assert_allclose(average.numpy(), mean, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(weight.numpy(), average.numpy())
    # BN statistics: one epoch of the training split without augmentation, in the epoch-0
    # order of the run (a stateless permutation seeded by (seed, 0)), 4 batches of 16.
    images, _ = exp.data.as_numpy("train")
    order = tf.random.experimental.stateless_shuffle(tf.range(64, dtype=tf.int64), [0, 0])
    batches = images[order.numpy()].astype(np.float64).reshape(4, 16, 8, 8, 3)
    mean, variance = _conv_bn_statistics(swa_model, batches)
    (bn,) = batch_norm_layers(swa_model)
    np.testing.assert_allclose(bn.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), variance, rtol=1e-5, atol=1e-7)
    assert record["bn_batches"] == 4 and record["bn_augment"] is False
    # metrics.json, the closing-summary keys and TensorBoard.
    model_dir = Path(exp.config.model_dir)
    written = json.loads((model_dir / "metrics.json").read_text())
    swa = written["swa"]
    assert swa["models_averaged"] == 3 and swa["steps_averaged"] == [6, 9, 12]
    assert swa["start_step"] == 4 and swa["step"] == 12
    assert {"loss", "accuracy", "top5", "examples"} <= set(swa) and swa == metrics["swa"]
    ensemble = written["snapshot_ensemble"]
    assert ensemble["cycles"] == [2, 3] and ensemble["steps"] == [9, 12]
    assert [m["step"] for m in ensemble["per_snapshot"]] == [9, 12]
    # The last snapshot is the last step's model: its accuracy is the final evaluation's.
    assert ensemble["per_snapshot"][-1]["accuracy"] == written["final"]["accuracy"]
    assert "ema" in written
    tags = _eval_steps(model_dir)
    assert {"accuracy", "swa/accuracy", "ema/accuracy", "ensemble/accuracy"} <= set(tags)
    # The ensemble after the restarts from the 2nd snapshot on, and at the end.
    assert tags["ensemble/accuracy"] == [6, 9, 12] and tags["swa/top5"] == [12]
    # export/swa/ loads in plain Keras and is the SWA model.
    path = model_dir / "export" / "swa"
    loaded = keras.saving.load_model(path / "model.keras")
    x = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), swa_model(x), atol=1e-6)
    labels = json.loads((path / "labels.json").read_text())
    assert labels["weights"] == "swa" and labels["models_averaged"] == 3
    assert (path / "saved_model" / "saved_model.pb").exists() and exp.export_complete()


def _eval_steps(model_dir):
    """{TensorBoard eval tag: the steps it was written at}."""
    steps = {}
    for name in os.listdir(model_dir / "tensorboard" / "eval"):
        for event in tf.compat.v1.train.summary_iterator(
            str(model_dir / "tensorboard" / "eval" / name)
        ):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return {tag: sorted(s) for tag, s in steps.items()}


def test_eval_log_lines_and_closing_summary(absl_info):
    results = {"loss": 0.51234, "accuracy": 0.875, "examples": 16, "top5": 1.0, "members": 2}
    summaries.log_eval(12, 3.0, results, label="swa")
    summaries.log_eval(12, 3.0, {"loss": 0.5, "accuracy": 0.75, "examples": 16})
    assert absl_info[-2:] == [
        "eval step 12 (epoch 3.00) swa: loss=0.5123 accuracy=0.8750 top5=1.0000",
        "eval step 12 (epoch 3.00): loss=0.5000 accuracy=0.7500",
    ]
    metrics = {
        "step": 12,
        "epochs": 3.0,
        "final": {"accuracy": 0.75, "step": 12},
        "snapshot_ensemble": dict(results, cycles=[2, 3]),
        "swa": dict(results, models_averaged=3),
        "ema": {"accuracy": 0.8, "decay": 0.999},
    }
    lines = console.closing_summary(metrics, "/m", None).splitlines()
    assert "  snapshot ensemble  0.8750 (2 snapshots, cycles 2-3); top-5 1.0000" in lines
    assert "  swa                0.8750 (3 models averaged, BN recomputed); top-5 1.0000" in lines
    assert "  ema                0.8000 (decay 0.999, BN recomputed)" in lines


@pytest.fixture
def absl_info():
    import logging

    from absl import logging as absl_logging

    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    with helpers.absl_messages(logging.INFO) as records:
        yield records
    absl_logging.set_verbosity(level)


def _assert_same_results(a, b, atol):
    """Two runs' averages, averaged models and their records agree."""
    (exp_a, metrics_a, _), (exp_b, metrics_b, _) = a, b
    for x, y in zip(exp_a.averaging.average.averages, exp_b.averaging.average.averages):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=atol, rtol=0)
    assert exp_a.averaging.average.num_averaged == exp_b.averaging.average.num_averaged
    for name in ("swa", "ema"):
        for x, y in zip(
            exp_a.averaging._models[name][0].weights, exp_b.averaging._models[name][0].weights
        ):
            np.testing.assert_allclose(x.numpy(), y.numpy(), atol=atol, rtol=0, err_msg=name)
        assert metrics_a[name]["accuracy"] == metrics_b[name]["accuracy"]
        assert metrics_a[name]["loss"] == pytest.approx(metrics_b[name]["loss"], abs=atol)
    ensemble_a, ensemble_b = metrics_a["snapshot_ensemble"], metrics_b["snapshot_ensemble"]
    assert ensemble_a["steps"] == ensemble_b["steps"]
    assert ensemble_a["loss"] == pytest.approx(ensemble_b["loss"], abs=atol)


def test_interrupted_mid_swa_and_resumed_equals_straight_through(straight, tmp_path):
    cfg = config(tmp_path, **AVERAGING)
    # Loops end at 2, 3, 4, 6, 8: the signal during the fifth stops at step 8, after the
    # first SWA update (6) and before the others (9, 12).
    exp, train, collected = run(cfg, signal_after_call=5)
    with pytest.raises(Preempted, match="step 8"):
        train()
    assert exp.averaging.average.num_averaged == 1 and len(collected) == 1
    resumed, train, collected = run(cfg)
    assert resumed.step == 8 and resumed.averaging.average.num_averaged == 1
    metrics = train()
    assert len(collected) == 2 and metrics["swa"]["steps_averaged"] == [6, 9, 12]
    _assert_same_results(straight, (resumed, metrics, None), atol=1e-6)


def test_two_replicas_equal_one_device(straight, tmp_path):
    exp, train, _ = run(config(tmp_path, **AVERAGING), strategy=helpers.two_replicas())
    assert exp.strategy.num_replicas_in_sync == 2
    metrics = train()
    _assert_same_results(straight, (exp, metrics, None), atol=1e-5)
    # Every replica's copy of the average and of the SWA model's BN statistics is the same.
    swa_model = exp.averaging._models["swa"][0]
    for variable in [*exp.averaging.average.averages, *batch_norm_layers(swa_model)[0].weights]:
        value = variable.value if isinstance(variable, keras.Variable) else variable
        copies = [c.numpy() for c in exp.strategy.experimental_local_results(value)]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])
