"""Crash test of the work around training: SIGKILL during the LR range test, interpretation,
the ensemble evaluation and the SWA BatchNorm pass; each re-run is the same command. The last
one ends with a complete export, the uninterrupted run's history and weights (main and SWA),
and every result recorded (tests/test_faults.py kills during training and the export)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np

from tests.helpers import ROOT
from tests.test_faults import _weights  # the same reader of exported weights
from trainer import layout

ARGS = [
    "--dataset=synthetic",
    "--synthetic_train_size=128",
    "--synthetic_test_size=32",
    "--model=tests.user_model_lib:classifier",  # tiny, with BatchNorm (SWA recomputes it)
    "--image_size=16",
    "--global_batch_size=32",
    "--split_at=preset",
    "--lr_spread=100",
    "--max_lr=auto",
    "--lr_find_steps=23",
    "--lr_find_start=1e-5",
    "--lr_find_end=1",
    "--first_cycle_steps=4",
    "--cycle_mult=1",
    "--train_steps=12",
    "--steps_per_loop=4",
    "--checkpoint_every_steps=4",
    "--ensemble_snapshots=2",
    "--swa_start_epoch=1",
    "--noprogress",
]


def _run(model_dir, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != "LRTECH_KILL_AT"}
    env["PYTHONPATH"] = str(ROOT)  # the builder's module
    if kill_at:
        env["LRTECH_KILL_AT"] = kill_at
    command = [sys.executable, str(ROOT / "run_train.py"), f"--model_dir={model_dir}", *ARGS]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)


def _straight(model_dir):
    from trainer import flags as flags_lib
    from trainer.experiment import Experiment
    from trainer.loop.strategy import make_strategy

    config = flags_lib.parse_config([f"--model_dir={model_dir}", *ARGS])
    experiment = Experiment(config, make_strategy(config.strategy)).build()
    experiment.restore()
    metrics = experiment.train()
    experiment.export()
    return metrics


def test_kills_around_training_end_as_the_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    for point in ("lr_find:10", "interpret:1", "ensemble:1", "swa_bn:1"):
        result = _run(killed, kill_at=point)
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-3000:])
        assert not (killed / layout.EXPORT_DIR).exists(), point
    final = _run(killed)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "Traceback" not in final.stderr
    for sub in ("", "swa"):
        for name in layout.EXPORT_FILES:
            assert (killed / layout.EXPORT_DIR / sub / name).exists(), (sub, name)
    for name in (layout.CONFUSION_PLOT, layout.TOP_LOSSES_PLOT, layout.LR_FIND_JSON):
        assert (killed / name).exists(), name

    straight = _straight(tmp_path / "straight")
    record = json.loads((killed / layout.METRICS_FILE).read_text())
    assert record["history"] == straight["history"]
    for key in ("per_class", "confusion_matrix", "snapshot_ensemble", "swa"):
        assert record[key] == straight[key], key
    assert record["train"] is not None  # recorded by the process that trained
    for sub in ("", "swa"):
        a = _weights(tmp_path / "straight" / layout.EXPORT_DIR / sub / layout.EXPORT_WEIGHTS)
        b = _weights(killed / layout.EXPORT_DIR / sub / layout.EXPORT_WEIGHTS)
        assert sorted(a) == sorted(b) and len(a) > 10
        for name in a:
            np.testing.assert_allclose(a[name], b[name], atol=1e-6, rtol=0, err_msg=name)
