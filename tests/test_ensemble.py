"""trainer.tools.ensemble: the averaged softmax of snapshots, 1 and 2 replicas, and the command."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.averaging import ensemble as ensemble_lib
from trainer.config import Config
from trainer.errors import UserError
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
    for k in (10, 2, 9):
        (tmp_path / "snapshots" / f"cycle_{k}.weights.h5").write_bytes(b"")
    # By cycle number, not by name (cycle_10 < cycle_2 as strings).
    assert [s.cycle for s in ensemble_lib.select_snapshots(str(tmp_path), 2)] == [9, 10]
    with pytest.raises(UserError, match="no config.json"):
        ensemble.read_run_config(str(tmp_path))
    assert ensemble.read_run_config(str(model_dir)).model == "resnet8"


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
    mirrored = make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    with mirrored.scope():
        two = bn_model()
    original = [w.numpy() for w in two.weights]
    b = ensemble_lib.ensemble_evaluate(
        mirrored, two, paths, _dataset_fn(mirrored), NUM_CLASSES, return_probabilities=True
    )
    np.testing.assert_array_equal(b["labels"], a["labels"])  # gathered in order
    np.testing.assert_allclose(b["probabilities"], a["probabilities"], atol=1e-6)
    assert b["accuracy"] == a["accuracy"] and abs(b["loss"] - a["loss"]) < 1e-6
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
