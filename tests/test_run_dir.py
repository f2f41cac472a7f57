"""model_dir ownership: checks before heavy work, the lock, --restart, atomic writes."""

import json
import os
import subprocess
import sys
import time

import pytest

from trainer.errors import UserError
from trainer.run_dir import files as run_dir


def test_check_refuses_files_and_kernel_filesystems(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match=r"--model_dir=.*/file: is a file"):
        run_dir.check(str(a_file))
    with pytest.raises(UserError, match=r"/file is a file, not a directory"):
        run_dir.check(str(a_file / "run"))
    with pytest.raises(UserError, match="kernel filesystem"):
        run_dir.check("/proc/lrtech_run")
    made = run_dir.check(str(tmp_path / "new" / "run"))
    assert os.path.isdir(made) and os.listdir(made) == []  # the write probe is gone


def test_check_refuses_an_unwritable_directory(tmp_path, monkeypatch):
    locked = tmp_path / "ro"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o500)
    else:
        # root writes through permission bits; stand in for a read-only mount's EROFS.
        def read_only(*args, dir=None, **kw):
            raise OSError(30, "Read-only file system", dir)

        monkeypatch.setattr(run_dir.tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(UserError, match=r"--model_dir=.*/ro: cannot write in"):
        run_dir.check(str(locked))


HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from trainer.run_dir import files as run_dir
run_dir.Lock({path!r}).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_names_the_live_holder_and_takes_over_a_dead_ones(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(root=root, path=str(tmp_path))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as info:
            run_dir.Lock(str(tmp_path)).acquire()
        assert f"pid {holder.pid}" in str(info.value) and "in use by another run" in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its record is still in the file, the flock is gone.
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid
    lock = run_dir.Lock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    with run_dir.Lock(str(tmp_path)):  # released: free again
        pass


def test_move_aside_keeps_everything(tmp_path):
    assert run_dir.move_aside(str(tmp_path)) is None
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "ckpt-3.index").write_text("i")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")  # not a run file: stays
    moved = run_dir.move_aside(str(tmp_path))
    assert os.path.dirname(moved) == str(tmp_path / "previous")
    assert sorted(os.listdir(moved)) == ["ckpt", "config.json"]
    assert (tmp_path / "notes.txt").exists() and not (tmp_path / "ckpt").exists()
    time.sleep(0.01)
    (tmp_path / "config.json").write_text("{}")
    assert run_dir.move_aside(str(tmp_path)) != moved  # a second restart: its own folder


def test_write_text_and_replace_dir_are_atomic(tmp_path):
    path = tmp_path / "f.json"
    run_dir.write_text(str(path), "one")
    run_dir.write_text(str(path), "two")
    assert path.read_text() == "two" and os.listdir(tmp_path) == ["f.json"]
    final = tmp_path / "export"
    for version in ("a", "b"):
        tmp = tmp_path / f"export.tmp-{version}"
        tmp.mkdir()
        (tmp / "model").write_text(version)
        run_dir.replace_dir(str(tmp), str(final))
        assert (final / "model").read_text() == version
    assert sorted(os.listdir(tmp_path)) == ["export", "f.json"]


def test_chief_task_from_tf_config():
    assert run_dir.is_chief_task("auto")
    worker = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    assert not run_dir.is_chief_task("multi_worker", json.dumps(worker))
    worker["task"]["index"] = 0
    assert run_dir.is_chief_task("multi_worker", json.dumps(worker))
    worker["cluster"]["chief"] = ["c:1"]
    assert not run_dir.is_chief_task("multi_worker", json.dumps(worker))
