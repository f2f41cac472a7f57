"""The paths a newcomer takes: the LR finder as its own step, honest re-runs, the default run
directory and its first line, warnings for runs that will go nowhere."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers
from tests.helpers import ROOT
from trainer import flags as flags_lib
from trainer import layout
from trainer.errors import IncompatibleCheckpointError
from trainer.reporting import console

TINY_FLAGS = """--dataset=synthetic
--synthetic_train_size=64
--synthetic_test_size=16
--model=resnet8
--image_size=32
--global_batch_size=16
--epochs=3
--max_lr=0.01
--first_cycle_epochs=1
--split_at=preset
--lr_mults=0.1,0.3,1
--steps_per_loop=4
--noprogress
"""


def _run_train(cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "run_train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_lr_find_alone_on_a_flagfile_with_a_length_tests_and_stops(tmp_path):
    (tmp_path / "tiny.flags").write_text(TINY_FLAGS)
    result = _run_train(tmp_path, "--flagfile=tiny.flags", "--lr_find", "--lr_find_steps=23")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # The default run directory is runs/<flagfile name> under the current directory.
    assert lines[0] == "Run directory: runs/tiny (LR range test only)"
    run = tmp_path / "runs" / "tiny"
    assert sorted(os.listdir(run)) == [layout.LR_FIND_JSON, layout.LR_FIND_PLOT]  # no ckpt
    assert sum(line.startswith("suggested --max_lr=") for line in lines) == 1
    assert lines[-1].startswith("Done: runs/tiny (LR range test only")
    record = json.loads((run / layout.LR_FIND_JSON).read_text())
    # Again: the recorded test is kept, not repeated.
    again = _run_train(tmp_path, "--flagfile=tiny.flags", "--lr_find", "--lr_find_steps=23")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / layout.LR_FIND_JSON).read_text()) == record
    assert "kept the one recorded" in again.stdout + again.stderr


def test_a_changed_flag_on_resume_is_one_line_and_nothing_changes(tmp_path):
    run = dict(train_steps=4, first_cycle_steps=2, split_at=("mid",), lr_mults=(0.1, 1.0))
    cfg = helpers.tiny_config(tmp_path, **run)
    helpers.trained(cfg)
    config_json = (tmp_path / layout.CONFIG_FILE).read_text()
    flags_txt = (tmp_path / layout.FLAGS_FILE).read_text()
    for changes, named in (
        ({"max_lr": 0.02}, "--max_lr=0.01 -> 0.02"),
        ({"optimizer": "sgd"}, "--optimizer=adam -> sgd"),
        ({"layer_decay": 0.5, "split_at": ()}, "--layer_decay=none -> 0.5"),
        ({"schedule": "one_cycle", "first_cycle_steps": None}, "--schedule=sgdr -> one_cycle"),
        ({"cycle_mult": 1.0}, "--cycle_mult=2.0 -> 1.0"),
        ({"ema_decay": 0.9}, "--ema_decay=none -> 0.9"),
    ):
        exp = helpers.build(cfg.replace(**changes))
        with pytest.raises(IncompatibleCheckpointError) as error:
            exp.restore()
        message = str(error.value)
        assert "\n" not in message and named in message, message
        assert "--restart" in message and "new --model_dir" in message
        assert (tmp_path / layout.CONFIG_FILE).read_text() == config_json
        assert (tmp_path / layout.FLAGS_FILE).read_text() == flags_txt


def test_the_length_may_change_and_config_json_follows(tmp_path):
    run = dict(train_steps=4, first_cycle_steps=2, split_at=("mid",), lr_mults=(0.1, 1.0))
    cfg = helpers.tiny_config(tmp_path, **run)
    helpers.trained(cfg)
    longer = cfg.replace(train_steps=8, eval_every_epochs=0.5)
    exp, _ = helpers.trained(longer)
    assert exp.step == 8
    full = json.loads((tmp_path / layout.CONFIG_FILE).read_text())["full"]
    assert full["train_steps"] == 8 and full["eval_every_epochs"] == 0.5
    assert "--train_steps=8" in (tmp_path / layout.FLAGS_FILE).read_text()  # they agree


def test_a_schedule_that_spans_the_run_refuses_a_new_length(tmp_path):
    cfg = helpers.tiny_config(
        tmp_path, train_steps=4, schedule="one_cycle", split_at=(), lr_mults=None
    )
    helpers.trained(cfg)
    with pytest.raises(IncompatibleCheckpointError, match="one_cycle schedule spans"):
        helpers.build(cfg.replace(train_steps=8)).restore()


def test_default_run_directory_follows_the_flagfile():
    assert flags_lib.default_model_dir(
        ["x", "--flagfile=configs/quickstart.flags"]
    ) == os.path.join("runs", "quickstart")
    assert flags_lib.default_model_dir(["x"]) == os.path.join("runs", "run")
    resolved = flags_lib.resolve_flagfiles(["x", "--flagfile=quickstart"])
    assert resolved[1].endswith(os.path.join("configs", "quickstart.flags"))
    assert flags_lib.resolve_flagfiles(["x", "--flagfile=nothing_here"]) == [
        "x",
        "--flagfile=nothing_here",
    ]


def test_few_steps_and_large_batches_are_named_in_one_line_each(tmp_path):
    cfg = helpers.tiny_config(tmp_path, epochs=2, global_batch_size=128, split_at=())
    exp = helpers.build(cfg)
    warnings = console.plan_warnings(exp.config, exp.plan, exp.info)
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert "trains 2 steps in all" in warnings[0] and "--global_batch_size=128" in warnings[0]
    assert "--epochs=2" in warnings[0]
    assert "--global_batch_size=128 is larger than the 64 training images" in warnings[1]
    fine = helpers.build(helpers.tiny_config(tmp_path / "b", train_steps=60, split_at=()))
    assert console.plan_warnings(fine.config, fine.plan, fine.info) == []


def test_the_lock_file_goes_with_the_run_and_odd_lock_paths_are_one_line(tmp_path):
    from trainer.errors import UserError
    from trainer.run_dir.files import Lock

    lock = Lock(str(tmp_path)).acquire()
    assert (tmp_path / layout.LOCK_FILE).exists()
    lock.release()
    assert not (tmp_path / layout.LOCK_FILE).exists()  # also after a user error: train()
    with Lock(str(tmp_path)):
        pass
    assert not (tmp_path / layout.LOCK_FILE).exists()
    (tmp_path / layout.LOCK_FILE).mkdir()
    with pytest.raises(UserError, match=r"\.lock is a directory, not a run's lock file"):
        Lock(str(tmp_path)).acquire()
    (tmp_path / layout.LOCK_FILE).rmdir()
    (tmp_path / layout.LOCK_FILE).symlink_to(tmp_path / "missing" / "target")
    with pytest.raises(UserError, match=r"\.lock is a symbolic link"):
        Lock(str(tmp_path)).acquire()


def test_a_failed_run_removes_its_lock(tmp_path):
    (tmp_path / "tiny.flags").write_text(TINY_FLAGS)
    result = _run_train(tmp_path, "--flagfile=tiny.flags", "--weights=/nonexistent.weights.h5")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "runs" / "tiny" / layout.LOCK_FILE).exists()


def test_a_signal_during_the_range_test_stops_within_one_step(tmp_path):
    from trainer.errors import Preempted
    from trainer.lr_find import range_test

    cfg = helpers.tiny_config(
        tmp_path, train_steps=4, split_at=("mid",), lr_mults=(0.1, 1.0), lr_find_steps=40
    )
    exp = helpers.restored(cfg)
    before = [w.numpy() for w in exp.model.weights]
    asked = []

    def interrupted():
        asked.append(1)
        return 15 if len(asked) > 3 else None  # SIGTERM arrives after the third step

    with pytest.raises(Preempted, match=r"signal 15 during the LR range test \(step 3 of 40\)"):
        range_test.run(
            exp.config,
            exp.strategy,
            exp.model,
            exp.table,
            lambda step: exp.train_data(step),
            first_trainable=0,
            interrupted=interrupted,
        )
    assert len(asked) == 4  # asked before every step: stopped within one step
    for a, b in zip(before, (w.numpy() for w in exp.model.weights)):
        np.testing.assert_array_equal(a, b)  # the model is put back first
