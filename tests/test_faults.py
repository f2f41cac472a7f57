"""Crash test: a run SIGKILLed at seeded moments, then re-run, ends as an uninterrupted run.

Kills land during a checkpoint write (`trainer.run_dir.faults` point after the checkpoint files are
written, before old ones rotate and the state file is updated), at a seeded time during
training, and in the middle of the export. Each re-run is the same command; the last one
must finish with the uninterrupted run's weights and a complete export. The uninterrupted run
is the same flags trained in this process (the killed runs are what needs processes).
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261123
ARGS = [
    "--dataset=synthetic",
    "--synthetic_train_size=128",
    "--synthetic_test_size=32",
    "--model=resnet8",
    "--global_batch_size=32",
    "--split_at=preset",
    "--lr_mults=0.01,0.1,1",
    "--max_lr=0.01",
    "--first_cycle_steps=4",
    "--train_steps=24",
    "--steps_per_loop=1",
    "--checkpoint_every_steps=3",
    "--keep_checkpoints=2",
    "--noprogress",
]


def _command(model_dir):
    return [sys.executable, str(ROOT / "run_train.py"), f"--model_dir={model_dir}", *ARGS]


def _run(model_dir, kill_at=None):
    env = dict(os.environ)
    env.pop("LRTECH_KILL_AT", None)
    if kill_at:
        env["LRTECH_KILL_AT"] = kill_at
    return subprocess.run(
        _command(model_dir), cwd=ROOT, capture_output=True, text=True, timeout=240, env=env
    )


def _straight_weights(model_dir):
    """The uninterrupted run of ARGS, in-process: its weights as the export writes them."""

    import models
    from trainer import flags as flags_lib
    from trainer.experiment import Experiment
    from trainer.loop.strategy import make_strategy

    config = flags_lib.parse_config([f"--model_dir={model_dir}", *ARGS])
    experiment = Experiment(config, make_strategy(config.strategy)).build()
    experiment.interpret = lambda: {}  # plots are tested in test_experiment
    experiment.restore()
    assert experiment.train()["step"] == 24
    path = model_dir / "model.weights.h5"
    models.portable(experiment.model).save_weights(str(path))  # as Experiment.export does
    return _weights(path)


def _weights(path):
    out = {}

    def keep(name, obj):  # a non-None return would stop visititems
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    with h5py.File(path, "r") as f:
        f.visititems(keep)
    return out


def _kill_during_training(model_dir, rng):
    proc = subprocess.Popen(
        _command(model_dir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt = model_dir / "ckpt"
    before = {p.name for p in ckpt.glob("ckpt-*.index")}
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if {p.name for p in ckpt.glob("ckpt-*.index")} - before:
            break  # training has resumed and saved once more
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.6))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return proc.returncode


def test_killed_runs_resume_to_the_uninterrupted_weights(tmp_path):
    rng = random.Random(SEED)
    killed = tmp_path / "killed"
    first = _run(killed, kill_at="checkpoint_written:2")  # while saving step 6
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert (killed / "ckpt" / "ckpt-6.index").exists()

    _kill_during_training(killed, rng)  # at a seeded moment after step 6 resumed

    last = _run(killed, kill_at="export:2")  # model.keras and weights written, SavedModel not
    if last.returncode == -signal.SIGKILL:
        assert not (killed / "export").exists(), "a partial export was put in place"
    else:  # the seeded kill came late: the export was complete already
        assert last.returncode == 0, last.stderr[-3000:]

    final = _run(killed)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "Traceback" not in final.stderr
    for name in ("model.keras", "model.weights.h5", "saved_model/saved_model.pb"):
        assert (killed / "export" / name).exists(), name
    assert not list(tmp_path.glob("killed/export.tmp-*"))
    a = _straight_weights(tmp_path / "straight")
    b = _weights(killed / "export" / "model.weights.h5")
    assert sorted(a) == sorted(b) and len(a) > 10
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, rtol=0, err_msg=name)
