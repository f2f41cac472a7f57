"""Checkpoints: exact resume, compatibility, NaN, SIGTERM, snapshots at SGDR restarts."""

import json
import os
import signal

import keras
import numpy as np
import pytest

from trainer import checkpoints
from trainer.config import Config
from trainer.errors import IncompatibleCheckpointError, NonFiniteError, Preempted
from trainer.experiment import Experiment
from trainer.strategy import make_strategy


def tiny_model(num_classes):
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, name="head"),
        ]
    )


def config(model_dir, **kw):
    base = dict(
        model_dir=str(model_dir),
        image_size=8,
        synthetic_train_size=64,
        synthetic_test_size=16,
        global_batch_size=16,
        train_steps=12,
        optimizer="adam",
        max_lr=0.01,
        first_cycle_steps=3,
        cycle_mult=2.0,
        split_at=("bn",),
        lr_mults=(0.1, 1.0),
        steps_per_loop=4,
        checkpoint_every_steps=3,
        keep_checkpoints=2,
        progress=False,
    )
    base.update(kw)
    return Config(**base)


def experiment(cfg, devices=None):
    strategy = (
        make_strategy("mirrored", devices=devices) if devices else make_strategy("one_device")
    )
    exp = Experiment(cfg, strategy, model_fn=tiny_model).build()
    exp.restore()
    return exp


def state(exp):
    values = [v.numpy() for v in exp.model.weights] + [v.numpy() for v in exp.optimizer.variables]
    return values


def test_interrupted_and_resumed_equals_straight_through(tmp_path):
    straight = experiment(config(tmp_path / "straight"))
    straight.train()
    # 5 steps (loops of 4 and 1, checkpoints at 3 and 5), then a new process-like resume.
    first = experiment(config(tmp_path / "resumed", train_steps=5))
    first.train()
    resumed = experiment(config(tmp_path / "resumed"))
    assert resumed.step == 5
    assert int(resumed.optimizer.iterations.numpy()) == 5
    resumed.train()
    a, b = state(straight), state(resumed)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    names = sorted(os.listdir(tmp_path / "resumed" / "ckpt"))
    assert "ckpt-12.index" in names and "ckpt-9.index" in names and "ckpt-3.index" not in names


def test_incompatible_configuration_is_refused(tmp_path):
    experiment(config(tmp_path, train_steps=2)).train()
    before = sorted(os.listdir(tmp_path / "ckpt"))
    changed = config(tmp_path, optimizer="sgd", image_size=9)
    exp = Experiment(changed, make_strategy("one_device"), model_fn=tiny_model)
    with pytest.raises(IncompatibleCheckpointError) as info:
        exp.build().restore()
    message = str(info.value)
    assert "--optimizer: checkpoint has 'adam', now 'sgd'" in message
    assert "--image_size: checkpoint has 8, now 9" in message
    assert sorted(os.listdir(tmp_path / "ckpt")) == before
    assert json.loads((tmp_path / "config.json").read_text())["optimizer"] == "adam"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config(
        tmp_path,
        optimizer="sgd",
        schedule="constant",
        max_lr=1e30,
        lr_mults=(1, 1),
        checkpoint_every_steps=1,
        steps_per_loop=1,
    )
    exp = experiment(cfg)
    with pytest.raises(NonFiniteError) as info:
        exp.train()
    message = str(info.value)
    assert "non-finite" in message and "segment 0: 1e+30" in message
    bad_step = int(message.split(" at step ")[1].split()[0])
    assert bad_step >= 1  # the first step's loss (initial weights) is finite
    assert exp.checkpointer.latest().endswith(f"ckpt-{bad_step}")
    again = experiment(cfg)  # the last good checkpoint loads, with finite weights
    assert again.step == bad_step
    for v in again.model.weights:
        assert np.isfinite(v.numpy()).all()


def test_non_finite_weights_are_never_saved(tmp_path):
    exp = experiment(config(tmp_path))
    exp.model.weights[0].assign(np.full(exp.model.weights[0].shape, np.nan, np.float32))
    with pytest.raises(NonFiniteError, match="not saved"):
        exp.checkpointer.save(1, exp.model)
    assert exp.checkpointer.latest() is None


def test_sigterm_saves_at_the_loop_boundary_and_resume_continues(tmp_path):
    cfg = config(tmp_path, checkpoint_every_steps=1000, steps_per_loop=2)
    exp = experiment(cfg)
    run = exp.train_loop.run
    calls = []

    def run_then_signal(*args, **kw):
        out = run(*args, **kw)
        calls.append(1)
        if len(calls) == 2:  # a real signal, delivered to this process mid-train
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    exp.train_loop.run = run_then_signal
    handler = signal.getsignal(signal.SIGTERM)
    # Loops end at 2 and 3 (the SGDR restart); the signal during the second stops at 3.
    with pytest.raises(Preempted, match="step 3"):
        exp.train()
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    assert exp.checkpointer.latest().endswith("ckpt-3")
    resumed = experiment(cfg)
    assert resumed.step == 3
    assert resumed.train()["step"] == 12


def test_snapshots_at_restarts(tmp_path):
    # Cycles of 3, 6 steps: restarts at 3 and 9 within 12 steps.
    exp = experiment(config(tmp_path, snapshot_at_restarts=True))
    exp.train()
    snapshots = sorted(os.listdir(tmp_path / "snapshots"))
    assert snapshots == ["cycle_0.weights.h5", "cycle_1.weights.h5"]
    # cycle_1 holds the weights at step 9: equal to a 9-step run's final weights.
    other = experiment(config(tmp_path / "nine", train_steps=9))
    other.train()
    model = tiny_model(10)
    model.load_weights(tmp_path / "snapshots" / "cycle_1.weights.h5")
    for a, b in zip(model.weights, other.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_compat_record_fields():
    record = checkpoints.compat_record(config("/tmp/x"))
    assert record["split_at"] == ["bn"] and record["mixed_precision"] == "none"
