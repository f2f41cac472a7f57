"""Checkpoints: exact resume, compatibility, NaN, SIGTERM, snapshots at SGDR restarts."""

import json
import logging
import os
import signal

import numpy as np
import pytest

from tests import helpers
from tests.helpers import bn_config as config
from tests.helpers import bn_experiment as experiment
from tests.helpers import state
from tests.helpers import tiny_bn_model as tiny_model
from trainer.errors import IncompatibleCheckpointError, NonFiniteError, Preempted, UserError
from trainer.experiment import Experiment
from trainer.loop.strategy import make_strategy
from trainer.run_dir import checkpoints


def test_interrupted_and_resumed_equals_straight_through(tmp_path, bn_straight):
    # 5 steps (loops of 4 and 1, checkpoints at 3 and 5), then a new process-like resume.
    first = experiment(config(tmp_path / "resumed", train_steps=5))
    first.train()
    resumed = experiment(config(tmp_path / "resumed"))
    assert resumed.step == 5
    assert int(resumed.optimizer.iterations.numpy()) == 5
    resumed.train()
    a, b = bn_straight[0], state(resumed)
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
    assert "--optimizer=adam -> sgd" in message
    assert "--image_size=8 -> 9" in message
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
    train = exp.trainer.train
    calls = []

    def train_then_signal(num_steps):
        out = train(num_steps)
        calls.append(1)
        if len(calls) == 2:  # a real signal, delivered to this process mid-train
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    exp.trainer.train = train_then_signal
    handler = signal.getsignal(signal.SIGTERM)
    # Loops end at 2 and 3 (the SGDR restart); the signal during the second stops at 3.
    with pytest.raises(Preempted, match="step 3"):
        exp.train()
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    assert exp.checkpointer.latest().endswith("ckpt-3")
    resumed = experiment(cfg)
    assert resumed.step == 3
    assert resumed.train()["step"] == 12


def test_snapshots_at_restarts(tmp_path, bn_nine_steps):
    # Cycles of 3, 6 steps: restarts at 3 and 9 within 12 steps.
    exp = experiment(config(tmp_path, snapshot_at_restarts=True))
    exp.train()
    snapshots = sorted(os.listdir(tmp_path / "snapshots"))
    assert snapshots == ["cycle_0.weights.h5", "cycle_1.weights.h5"]
    # cycle_1 holds the weights at step 9: equal to a 9-step run's final weights.
    _, nine = bn_nine_steps
    model = tiny_model(10)
    model.load_weights(tmp_path / "snapshots" / "cycle_1.weights.h5")
    assert len(model.weights) == len(nine)
    for a, b in zip(model.weights, nine):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-6)


def test_compat_record_fields():
    record = checkpoints.compat_record(config("/tmp/x"))
    assert record["split_at"] == ["bn"] and record["mixed_precision"] == "none"


# Damage: checkpoints and config.json as a kill, a full disk or a bad copy leaves them. ----

DAMAGE_STEPS = 9  # checkpoints at 3, 6, 9 (keep 3)


@pytest.fixture
def absl_warnings():
    """The messages of absl warnings logged during the test."""
    with helpers.absl_messages(logging.WARNING) as records:
        yield records


@pytest.fixture
def damaged_source(bn_nine_steps, bn_straight):
    """A run of 9 steps with checkpoints 3, 6, 9, and the 12-step run's state it should
    continue to (both shared, see conftest.py; tests damage a copy)."""
    assert DAMAGE_STEPS == 9
    return bn_nine_steps[0], bn_straight[0]


def _copy(source, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(source, target)
    return target


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _damage(model_dir, kind):
    ckpt = model_dir / "ckpt"
    data = next(ckpt.glob("ckpt-9.data-*"))
    if kind == "missing_index":
        (ckpt / "ckpt-9.index").unlink()
    elif kind == "garbage_index":
        (ckpt / "ckpt-9.index").write_bytes(os.urandom(200))
    elif kind == "truncated_data":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif kind == "bit_flip_data":
        _flip_byte(data)
    elif kind == "missing_data":
        data.unlink()
    elif kind == "garbage_state":
        (ckpt / "checkpoint").write_text("model_checkpoint_path: ckpt-999\x00\x01garbage")
    elif kind == "missing_state":
        (ckpt / "checkpoint").unlink()
    else:
        raise ValueError(kind)


@pytest.mark.parametrize(
    "kind,restored",
    [
        ("missing_index", 6),
        ("garbage_index", 6),
        ("truncated_data", 6),
        ("bit_flip_data", 6),
        ("missing_data", 6),
        ("garbage_state", 9),
        ("missing_state", 9),
    ],
)
def test_damaged_checkpoint_falls_back_and_keeps_the_older_ones(
    tmp_path, damaged_source, kind, restored, absl_warnings
):
    source, straight_state = damaged_source
    model_dir = _copy(source, tmp_path)
    _damage(model_dir, kind)
    exp = experiment(config(model_dir))
    assert exp.step == restored
    names = set(os.listdir(model_dir / "ckpt"))
    assert {"ckpt-3.index", "ckpt-6.index"} <= names  # never rotated away by a broken newer one
    if restored == 6:
        assert any("ckpt-9" in w and "unreadable" in w for w in absl_warnings), absl_warnings
        assert "ckpt-9.index" not in names  # set aside, not deleted
        assert any(n.startswith("ckpt-9") for n in os.listdir(model_dir / "ckpt" / "broken"))
    # Training on ends exactly where an uninterrupted run ends.
    exp.train()
    for x, y in zip(straight_state, state(exp)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    assert exp.checkpointer.latest().endswith("ckpt-12")


def test_no_readable_checkpoint_is_a_user_error_naming_them(tmp_path, damaged_source):
    source, _ = damaged_source
    model_dir = _copy(source, tmp_path)
    for data in (model_dir / "ckpt").glob("ckpt-*.data-*"):
        _flip_byte(data)
    exp = helpers.build(config(model_dir), tiny_model)
    with pytest.raises(UserError) as info:
        exp.restore()
    message = str(info.value)
    assert "ckpt-9, ckpt-6, ckpt-3" in message and "--restart" in message
    assert len(list((model_dir / "ckpt").glob("ckpt-*.index"))) == 3  # nothing moved or lost


@pytest.mark.parametrize("kind", ["garbage", "empty", "deleted"])
def test_unreadable_or_missing_config_beside_checkpoints_is_a_user_error(
    tmp_path, damaged_source, kind
):
    source, _ = damaged_source
    model_dir = _copy(source, tmp_path)
    path = model_dir / "config.json"
    if kind == "deleted":
        path.unlink()
    else:
        path.write_text("{not json" if kind == "garbage" else "")
    # Even a different optimizer must not slip through once the record is gone.
    exp = helpers.build(config(model_dir, optimizer="sgd"), tiny_model)
    with pytest.raises(UserError, match="config.json") as info:
        exp.restore()
    assert "--restart" in str(info.value)
    assert kind != "empty" or "empty" in str(info.value)
    assert len(list((model_dir / "ckpt").glob("ckpt-*.index"))) == 3


def test_metrics_keep_the_whole_history_across_a_resume(tmp_path, bn_straight):
    # Epochs of 4 steps: evaluations at 4, 8, 12. The first process is stopped at step 6.
    straight = bn_straight[1]
    first = experiment(config(tmp_path / "resumed"))
    train = first.trainer.train

    def train_then_signal(num_steps):
        out = train(num_steps)
        if out["end"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    first.trainer.train = train_then_signal
    with pytest.raises(Preempted, match="step 6"):
        first.train()
    resumed = experiment(config(tmp_path / "resumed")).train()
    assert [e["step"] for e in resumed["history"]] == [4, 8, 12]
    for a, b in zip(straight["history"], resumed["history"]):
        assert a["accuracy"] == pytest.approx(b["accuracy"]) and a["step"] == b["step"]
    assert resumed["best"]["step"] == straight["best"]["step"]
    on_disk = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert [e["step"] for e in on_disk["history"]] == [4, 8, 12]


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path):
    cfg = config(
        tmp_path,
        optimizer="sgd",
        schedule="constant",
        max_lr=1e30,
        lr_mults=(1, 1),
        checkpoint_every_steps=1000,
        steps_per_loop=1,
    )
    with pytest.raises(NonFiniteError) as info:
        experiment(cfg).train()
    assert str(info.value).endswith("; no checkpoint was saved yet")
    assert "None" not in str(info.value)
