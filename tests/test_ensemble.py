"""trainer.tools.ensemble: the averaged softmax of snapshots, 1 and 2 replicas, and the command."""

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from trainer.averaging import ensemble as ensemble_lib
from trainer.config import Config
from trainer.errors import Preempted, UserError
from trainer.experiment import Experiment
from trainer.loop.strategy import distribute_dataset, make_strategy
from trainer.run_dir import checkpoints
from trainer.tools import ensemble

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 7  # > 5: top-5 is reported
N = 23  # eval examples: batches of 8, 8, 7 (the last one splits 4 + 3 over two replicas)


def _command(*args, popen=False):
    argv = [sys.executable, "-m", "trainer.ensemble", *args]
    kwargs = dict(cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if popen:
        return subprocess.Popen(argv, **kwargs)
    return subprocess.run(argv, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run directory with three snapshots; yields (model_dir, the
    `python3 -m trainer.ensemble --snapshots=2` process, the run's `Experiment`).

    config.json comes from `Experiment.restore` and the snapshots from
    `checkpoints.save_snapshot` (what the Snapshot action calls at each SGDR restart, as
    `run_train.py --snapshot_at_restarts` does), made in-process without training: tracing
    a train loop would double this module's time. The process starts at once so that it
    imports TensorFlow while the in-process tests run.
    """
    model_dir = tmp_path_factory.mktemp("ensemble") / "run"
    config = Config(
        model_dir=str(model_dir),
        dataset="synthetic",
        synthetic_train_size=32,
        synthetic_test_size=24,
        model="resnet8",
        global_batch_size=16,
        train_steps=6,
        first_cycle_steps=2,
        cycle_mult=1.0,
        snapshot_at_restarts=True,
        progress=False,
    )
    experiment = Experiment(config, make_strategy("auto")).build()
    experiment.restore()
    rng = np.random.default_rng(0)
    for cycle in range(3):
        for w in experiment.model.trainable_weights:  # three different members
            w.assign(w.numpy() + rng.normal(0.0, 0.05, w.shape).astype("float32"))
        checkpoints.save_snapshot(str(model_dir), experiment.model, cycle, 2 * (cycle + 1))
    process = _command(f"--model_dir={model_dir}", "--snapshots=2", popen=True)
    yield model_dir, process, experiment
    if process.poll() is None:
        process.kill()
        process.communicate()


def bn_model():
    return keras.Sequential(
        [
            keras.Input((4, 4, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(NUM_CLASSES, name="head"),
        ]
    )


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4, 4, 3)).astype("float32")
    return x, rng.integers(0, NUM_CLASSES, N).astype("int32")


def _snapshots(model, directory, count=3):
    """`count` weight files of `model`'s architecture with different random weights."""
    rng = np.random.default_rng(1)
    paths = []
    for k in range(count):
        for w in model.weights:
            low = 0.5 if w.name in ("gamma", "moving_variance") else -1.0
            w.assign(rng.uniform(low, low + 1.5, w.shape).astype("float32"))
        path = directory / f"cycle_{k}.weights.h5"
        model.save_weights(path)
        paths.append(path)
    return paths


def _softmax(logits):
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _dataset_fn(strategy):
    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    return lambda: distribute_dataset(strategy, dataset)


def _weights_bytes(model=None):
    """A whole .weights.h5 file (of `model`, default a tiny Dense model), as bytes."""
    model = model or keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lrtech_test_{os.getpid()}.weights.h5"
    model.save_weights(path)
    try:
        return path.read_bytes()
    finally:
        path.unlink()


def test_snapshot_selection(run, tmp_path):
    # First in the module: its fixture starts the command, which then runs beside the rest.
    model_dir, _, _ = run
    found = ensemble_lib.find_snapshots(str(model_dir))
    assert [s.cycle for s in found] == [0, 1, 2]
    (model_dir / "snapshots" / ".cycle_9.tmp-1.weights.h5").write_bytes(b"")  # half written
    assert ensemble_lib.find_snapshots(str(model_dir)) == found
    assert ensemble_lib.select_snapshots(str(model_dir), 1) == found[-1:]
    assert ensemble_lib.select_snapshots(str(model_dir), None) == found
    with pytest.raises(UserError, match=f"--snapshots=9: .* holds only {len(found)}"):
        ensemble_lib.select_snapshots(str(model_dir), 9)
    with pytest.raises(UserError, match="--snapshots=0"):
        ensemble_lib.select_snapshots(str(model_dir), 0)
    with pytest.raises(UserError, match="no snapshots"):
        ensemble_lib.select_snapshots(str(tmp_path), None)
    (tmp_path / "snapshots").mkdir()
    weights = _weights_bytes()
    for k in (10, 2, 9):
        (tmp_path / "snapshots" / f"cycle_{k}.weights.h5").write_bytes(weights)
    # By cycle number, not by name (cycle_10 < cycle_2 as strings).
    assert [s.cycle for s in ensemble_lib.select_snapshots(str(tmp_path), 2)] == [9, 10]
    with pytest.raises(UserError, match="no config.json"):
        ensemble.read_run_config(str(tmp_path))
    assert ensemble.read_run_config(str(model_dir)).model == "resnet8"


def test_damaged_snapshots_are_set_aside_and_left_out(tmp_path):
    """Truncated, garbage, empty and directory snapshots: each is moved to snapshots/broken/
    with one log line and the selection goes on without it; none left is one UserError."""
    directory = tmp_path / "snapshots"
    directory.mkdir()
    good = _weights_bytes()
    damaged = {1: good[:1000], 2: b"garbage" * 100, 3: b""}
    for k in range(6):
        path = directory / f"cycle_{k}.weights.h5"
        if k == 4:
            path.mkdir()
        else:
            path.write_bytes(damaged.get(k, good))
    with helpers.absl_messages(logging.WARNING) as logged:
        selected = ensemble_lib.select_snapshots(str(tmp_path), None)
    assert [s.cycle for s in selected] == [0, 5]
    broken = directory / "broken"
    assert sorted(p.name for p in broken.iterdir()) == [
        f"cycle_{k}.weights.h5" for k in (1, 2, 3, 4)
    ]
    assert len(logged) == 4
    for k, reason in [(1, "truncated file"), (2, "signature"), (3, "empty"), (4, "a directory")]:
        (line,) = [m for m in logged if f"cycle_{k}.weights.h5 is unreadable" in m]
        assert reason in line and f"left out, moved to {broken}/cycle_{k}.weights.h5" in line
    # Moved once: the next selection is the same, quietly; an explicit count gets the last
    # readable ones, and a larger count than there are is still refused.
    with helpers.absl_messages(logging.WARNING) as logged:
        assert ensemble_lib.select_snapshots(str(tmp_path), 2) == selected
    assert logged == []
    with pytest.raises(UserError, match="--snapshots=3: .* holds only 2 snapshots"):
        ensemble_lib.select_snapshots(str(tmp_path), 3)
    # A second damaged copy of a cycle keeps the first one in broken/.
    (directory / "cycle_1.weights.h5").write_bytes(b"")
    # None readable: one line naming each, nothing logged before it.
    (directory / "cycle_0.weights.h5").write_bytes(good[:500])
    (directory / "cycle_5.weights.h5").unlink()
    with helpers.absl_messages(logging.WARNING) as logged:
        with pytest.raises(UserError) as error:
            ensemble_lib.select_snapshots(str(tmp_path), None)
    message = str(error.value)
    assert "\n" not in message and logged == []
    assert message.startswith(f"--model_dir={tmp_path}: no readable snapshot: Snapshot ")
    assert "cycle_0.weights.h5 is unreadable" in message and "cycle_1.weights.h5.1" in message
    assert not list(directory.glob("cycle_*"))
    # The Snapshot action's save replaces a damaged file; a directory in its place (which a
    # rename cannot replace) goes to broken/ first.
    (directory / "cycle_7.weights.h5").mkdir()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    checkpoints.save_snapshot(str(tmp_path), model, 7, 28)
    assert ensemble_lib.snapshot_problem(str(directory / "cycle_7.weights.h5")) is None
    assert list(broken.glob("cycle_7.weights.h5.dir-*"))


def test_a_member_that_does_not_load_is_left_out(tmp_path):
    """A whole HDF5 file whose weights do not fit the model fails only when loaded: with
    `on_unreadable` the ensemble goes on with fewer members and names it."""
    model = bn_model()
    paths = _snapshots(model, tmp_path, count=2)
    other = tmp_path / "other.weights.h5"  # readable by h5py, not by this model
    other.write_bytes(_weights_bytes())
    assert ensemble_lib.snapshot_problem(str(other)) is None
    strategy = make_strategy("one_device")
    alone = ensemble_lib.ensemble_evaluate(
        strategy, model, paths, _dataset_fn(strategy), NUM_CLASSES, return_probabilities=True
    )
    with pytest.raises(ValueError):  # without on_unreadable the error propagates
        ensemble_lib.ensemble_evaluate(strategy, model, [other], _dataset_fn(strategy), 7)
    reported = []
    result = ensemble_lib.ensemble_evaluate(
        strategy,
        model,
        [paths[0], other, paths[1]],
        _dataset_fn(strategy),
        NUM_CLASSES,
        return_probabilities=True,
        on_unreadable=lambda source, reason: reported.append((source, reason)),
    )
    assert result["members"] == 2 and result["unreadable"] == [str(other)]
    assert [m["source"] for m in result["per_member"]] == [str(p) for p in paths]
    assert reported[0][0] == other and reported[0][1].startswith("ValueError")
    np.testing.assert_allclose(result["probabilities"], alone["probabilities"], atol=1e-12)
    with pytest.raises(UserError, match="none of the 1 members loaded"):
        ensemble_lib.ensemble_evaluate(
            strategy, model, [other], _dataset_fn(strategy), 7, on_unreadable=lambda *_: None
        )
    # The command's table says so.
    member = {"loss": 1.0, "accuracy": 0.5, "path": str(paths[0]), "cycle": 0}
    record = {
        "model_dir": str(tmp_path),
        "dataset": "synthetic",
        "eval_split": "test",
        "examples": N,
        "ensemble": {"loss": 1.0, "accuracy": 0.5, "members": 1},
        "snapshots": [member],
        "unreadable_cycles": [1],
    }
    lines = ensemble.summary(record).splitlines()
    assert "ensemble of 1" in lines[-3]
    assert lines[-2] == "  left out: cycle_1 (unreadable, moved to snapshots/broken/)"


def test_training_goes_on_without_a_damaged_snapshot(tmp_path):
    """The issue's repro in-process: SIGTERM after the snapshot of cycle 0, that snapshot
    truncated, the same run again: the ensemble at the next restart leaves it out (it was an
    h5py OSError traceback at every re-run); then a finished run whose snapshots are all
    damaged finishes with a log line, no ensemble and no error."""
    config = helpers.tiny_config(
        tmp_path / "run",
        train_steps=12,
        first_cycle_steps=4,
        cycle_mult=1.0,
        ensemble_snapshots=2,
        checkpoint_every_steps=4,
    )
    exp = helpers.restored(config)
    train = exp.trainer.train

    def train_then_signal(num_steps):
        out = train(num_steps)
        os.kill(os.getpid(), signal.SIGTERM)  # after the first loop: snapshot of cycle 0
        return out

    exp.trainer.train = train_then_signal
    with pytest.raises(Preempted):
        exp.train()
    snapshots = tmp_path / "run" / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == ["cycle_0.weights.h5"]
    cycle_0 = snapshots / "cycle_0.weights.h5"
    cycle_0.write_bytes(cycle_0.read_bytes()[:1000])

    with helpers.absl_messages(logging.WARNING) as logged:
        metrics = helpers.restored(config).train()
    assert (snapshots / "broken" / "cycle_0.weights.h5").stat().st_size == 1000
    (moved,) = [m for m in logged if "cycle_0.weights.h5 is unreadable" in m]
    assert moved.startswith("Step 8: ") and "truncated file" in moved
    assert "Step 8: snapshot ensemble of 1, not 2 (cycles [0] left out)" in logged
    final = metrics["snapshot_ensemble"]
    assert (final["members"], final["cycles"], final["step"]) == (2, [1, 2], 12)

    (snapshots / "cycle_1.weights.h5").write_bytes(b"garbage" * 10)
    (snapshots / "cycle_2.weights.h5").unlink()
    (snapshots / "cycle_2.weights.h5").mkdir()
    # A re-run keeps a recorded ensemble result; as after a kill before it was recorded:
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    del record["snapshot_ensemble"]
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(record))
    with helpers.absl_messages(logging.WARNING) as logged:
        helpers.restored(config).train()  # complete: only the missing closing evaluation
    assert "Step 12: no snapshot ensemble: none of cycles [1, 2] is readable" in logged
    assert sorted(p.name for p in (snapshots / "broken").iterdir()) == [
        "cycle_0.weights.h5",
        "cycle_1.weights.h5",
        "cycle_2.weights.h5",
    ]


def test_ensemble_is_the_mean_of_the_snapshots_softmax(tmp_path):
    model = bn_model()
    paths = _snapshots(model, tmp_path)
    original = [w.numpy() for w in model.weights]
    x, y = _data()
    members = []
    for path in paths:
        model.load_weights(path)
        members.append(_softmax(model.predict(x, verbose=0)))
    model.set_weights(original)

    def last_loaded_twice(m):  # a callable source: here, snapshot 2 again
        m.load_weights(paths[2])

    strategy = make_strategy("one_device")
    sources = [*paths, last_loaded_twice]
    result = ensemble_lib.ensemble_evaluate(
        strategy, model, sources, _dataset_fn(strategy), NUM_CLASSES, return_probabilities=True
    )
    expected = (members[0] + members[1] + 2 * members[2]) / 4
    np.testing.assert_allclose(result["probabilities"], expected, atol=1e-6)
    np.testing.assert_array_equal(result["labels"], y)
    true = expected[np.arange(N), y]
    assert result["members"] == 4 and result["examples"] == N
    assert result["accuracy"] == np.mean(expected.argmax(-1) == y)
    assert abs(result["loss"] - np.mean(-np.log(true))) < 1e-6
    higher = (expected > true[:, None]).sum(-1)
    assert result["top5"] == np.mean(higher < 5)
    for member, probs in zip(result["per_member"], members):
        assert member["accuracy"] == np.mean(probs.argmax(-1) == y)
        assert abs(member["loss"] - np.mean(-np.log(probs[np.arange(N), y]))) < 1e-6
    assert result["per_member"][3]["source"] == "last_loaded_twice"
    assert result["per_member"][0]["source"] == str(paths[0])
    # The model's own weights are back (the BN statistics too).
    for w, before in zip(model.weights, original):
        np.testing.assert_array_equal(w.numpy(), before)
    # Members differ: the ensemble is not one of them.
    assert not np.allclose(members[0], members[1], atol=1e-3)


def test_two_replicas_give_the_same_ensemble(tmp_path):
    one = bn_model()
    paths = _snapshots(one, tmp_path, count=2)
    single = make_strategy("one_device")
    a = ensemble_lib.ensemble_evaluate(
        single, one, paths, _dataset_fn(single), NUM_CLASSES, return_probabilities=True
    )
    mirrored = helpers.two_replicas()
    with mirrored.scope():
        two = bn_model()
    original = [w.numpy() for w in two.weights]
    b = ensemble_lib.ensemble_evaluate(
        mirrored, two, paths, _dataset_fn(mirrored), NUM_CLASSES, return_probabilities=True
    )
    np.testing.assert_array_equal(b["labels"], a["labels"])  # gathered in order
    np.testing.assert_allclose(b["probabilities"], a["probabilities"], atol=1e-6)
    # Per-replica batches of 4 vs 8 on one device: logits differ in the last bits (loss ~1e-6 rel).
    assert b["accuracy"] == a["accuracy"] and b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    for w, before in zip(two.weights, original):
        for copy in mirrored.experimental_local_results(w.value):
            np.testing.assert_array_equal(copy.numpy(), before)


def test_metrics_and_bad_sources():
    probs = np.array([[0.5, 0.3, 0.2], [0.0, 0.0, 1.0]])
    out = ensemble_lib.metrics_from_probabilities(probs, [1, 0], num_classes=3)
    assert out["accuracy"] == 0.0 and out["examples"] == 2 and "top5" not in out
    # A probability of exactly 0 is clipped, not an infinite loss.
    assert np.isfinite(out["loss"]) and out["loss"] > 300
    strategy = make_strategy("one_device")
    with pytest.raises(ValueError, match="at least one"):
        ensemble_lib.ensemble_evaluate(strategy, bn_model(), [], _dataset_fn(strategy), 7)
    x, y = _data()
    empty = tf.data.Dataset.from_tensor_slices((x[:0], y[:0])).batch(8)
    with pytest.raises(ValueError, match="no example"):
        ensemble_lib.ensemble_evaluate(
            strategy, bn_model(), [lambda m: None], lambda: distribute_dataset(strategy, empty), 7
        )


def test_command_without_snapshots_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"full": {}}))
    result = _command(f"--model_dir={tmp_path}")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ensemble: error: "), result.stderr
    assert f"--model_dir={tmp_path}: no snapshots" in lines[0]


def test_command_evaluates_the_last_snapshots(run):
    # Last in the module: the process started with the fixture ran beside the other tests.
    model_dir, process, experiment = run
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr[-3000:]
    record = json.loads((model_dir / "ensemble.json").read_text())
    cycles = [s.cycle for s in ensemble_lib.find_snapshots(str(model_dir))]
    assert [m["cycle"] for m in record["snapshots"]] == cycles[-2:]
    assert record["ensemble"]["members"] == 2 and record["examples"] == 24
    for m in record["snapshots"]:
        assert m["path"].endswith(f"cycle_{m['cycle']}.weights.h5")
        assert 0.0 <= m["accuracy"] <= 1.0 and np.isfinite(m["loss"])
    assert 0.0 <= record["ensemble"]["accuracy"] <= 1.0 and "top5" in record["ensemble"]
    assert f"cycle_{cycles[-1]}" in stdout and "ensemble of 2" in stdout
    assert f"{record['ensemble']['accuracy']:.4f}" in stdout
    assert "error" not in stderr.lower(), stderr
    # The command rebuilt the run's model and eval split: the library on the run's own
    # objects gives the same numbers.
    strategy = experiment.strategy

    def dataset_fn():
        return distribute_dataset(strategy, experiment.data.eval_dataset(16))

    paths = [m["path"] for m in record["snapshots"]]
    here = ensemble_lib.ensemble_evaluate(strategy, experiment.model, paths, dataset_fn, 10)
    assert here["accuracy"] == record["ensemble"]["accuracy"]
    assert abs(here["loss"] - record["ensemble"]["loss"]) < 1e-5
    for mine, theirs in zip(here["per_member"], record["snapshots"]):
        assert mine["accuracy"] == theirs["accuracy"]
