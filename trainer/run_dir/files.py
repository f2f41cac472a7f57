"""A run owns its model_dir: checked before heavy work, locked while alive, written atomically.

* `check(model_dir)` refuses, with one line, a model_dir that is a file, lies under a file or
  cannot be written (read-only, /proc, no permission), before TensorFlow is imported.
* `Lock` holds model_dir/.lock with `fcntl.flock` for the life of the process: a second run
  on the same directory exits 2 naming the holder (host, pid). The kernel drops the lock when
  its process dies, however it dies, so a lock file left by a dead run is taken over with a
  log line. Only the chief takes it under multi_worker.
* `write_text` and `replace_dir` write to a temporary name and rename, so a kill leaves the
  old file or directory, or the new one, never half of one.
* `move_aside` implements `--restart`: the old state is moved to model_dir/previous/<time>/,
  never deleted.

Paths with a URL scheme (gs://, s3://) skip the local-filesystem checks and the lock.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import tempfile

from absl import logging

from trainer import layout
from trainer.errors import UserError

LOCK_FILE = layout.LOCK_FILE
PREVIOUS_DIR = layout.PREVIOUS_DIR
RUN_FILES = layout.RUN_FILES  # what a run writes into model_dir; `move_aside` moves these


def is_local(path: str) -> bool:
    return "://" not in path


def is_chief_task(strategy_name: str, tf_config: str | None = None) -> bool:
    """Whether this process owns model_dir: always, except non-chief multi_worker tasks.

    Reads TF_CONFIG without importing TensorFlow (the chief is task "chief", or worker 0
    when the cluster has no chief), so the lock is taken before any heavy work.
    """
    if strategy_name != "multi_worker":
        return True
    raw = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
    try:
        spec = json.loads(raw or "{}")
        task = spec.get("task", {})
        kind, index = task.get("type"), int(task.get("index", 0))
        has_chief = bool(spec.get("cluster", {}).get("chief"))
    except (ValueError, AttributeError, TypeError):
        return True  # make_strategy reports the bad TF_CONFIG
    return is_chief(kind, index, has_chief)


def is_chief(task_type: str | None, task_index: int, has_chief: bool) -> bool:
    """The one rule of who is the chief: task "chief", or worker 0 when the cluster has no
    chief (TensorFlow's convention); a process outside any cluster (task_type None) is."""
    if has_chief:
        return task_type == "chief"
    return task_type in (None, "worker") and int(task_index or 0) == 0


def check(model_dir: str) -> str:
    """Creates model_dir if needed and checks that it is a writable directory.

    Returns:
        The absolute path.

    Raises:
        UserError: model_dir is a file, lies under a file, or cannot be created or written.
    """
    if not is_local(model_dir):
        return model_dir
    return check_directory("--model_dir", model_dir, create=True)


_KERNEL_DIRS = ("/proc", "/sys")  # no place for files, whatever the permission bits say


def check_directory(flag: str, path: str, *, create: bool) -> str:
    """Checks that the local directory `path` exists or can be created, and can be written.

    The one check of every output directory (a run's, evaluate's, ensemble's ...): errors
    name ``flag=path``. A temporary file is created and removed in the directory (or, with
    `create` False, in the nearest existing one on its way, and nothing is left behind): the
    only test that also holds for root, read-only mounts and kernel filesystems.

    Returns:
        The absolute path.

    Raises:
        UserError: `path` is a file or lies under one, is in /proc or /sys, or cannot be
            created or written.
    """
    named = f"{flag}={path}"
    absolute = os.path.abspath(path)
    if os.path.exists(absolute) and not os.path.isdir(absolute):
        raise UserError(f"{named}: is a file, not a directory")
    existing = absolute
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{named}: {existing} is a file, not a directory")
    check_writable(named, absolute if create else existing, create=create)
    return absolute


def check_writable(named: str, directory: str, *, create: bool = False) -> None:
    """Writes and removes a probe file in `directory` (made first when `create`).

    Raises:
        UserError: starting with `named`: a kernel filesystem, or the write failed.
    """
    if any(directory == d or directory.startswith(d + os.sep) for d in _KERNEL_DIRS):
        raise UserError(f"{named}: not a place for result files (a kernel filesystem)")
    try:
        if create:
            os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test."):
            pass
    except OSError as e:
        raise UserError(f"{named}: cannot write in {directory} ({e.strerror or e})") from None


class Lock:
    """An exclusive lock on model_dir for the life of this process (see the module docstring).

    Args:
        model_dir: The run directory (must exist).
    """

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._fd = None

    def acquire(self) -> Lock:
        """Takes the lock.

        Raises:
            UserError: Another live process holds it (named by host and pid).
        """
        if not is_local(self.model_dir):
            logging.info("model_dir %s is not local: no lock is taken", self.model_dir)
            return self
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read_holder(fd))
                os.close(fd)
                raise UserError(
                    f"--model_dir={self.model_dir} is in use by another run ({holder}); wait "
                    "for it to finish, stop it, or use another --model_dir"
                ) from None
            # The releasing holder removes the file: a lock on a file no longer at the path
            # guards nothing, so take the one at the path again.
            try:
                if os.fstat(fd).st_ino == os.lstat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        previous = _read_holder(fd)
        if previous and previous.get("pid") != os.getpid():
            logging.warning(
                "Taking over the lock of a run that ended without releasing it (%s)",
                _describe(previous),
            )
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def _open(self) -> int:
        # Something not made by a run at the lock's path is one line, not a traceback.
        if os.path.islink(self.path) or os.path.isdir(self.path):
            kind = "a symbolic link" if os.path.islink(self.path) else "a directory"
            raise UserError(
                f"--model_dir={self.model_dir}: {self.path} is {kind}, not a run's lock file; "
                "remove it"
            )
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise UserError(
                f"--model_dir={self.model_dir}: cannot open {self.path} ({e})"
            ) from None

    def release(self) -> None:
        """Releases the lock and removes the lock file (on every exit path the run controls;
        the kernel drops the lock of a killed process, and the next run takes the file over)."""
        if self._fd is None:
            return
        try:
            try:
                os.unlink(self.path)  # while still holding it: see acquire
            except FileNotFoundError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw.decode()) if raw.strip() else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    host, pid, since = (holder.get(k, "?") for k in ("host", "pid", "started"))
    return f"host {host}, pid {pid}, since {since}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def has_run_files(model_dir: str) -> bool:
    return any(os.path.exists(os.path.join(model_dir, name)) for name in RUN_FILES)


def move_aside(model_dir: str) -> str | None:
    """Moves a previous run's files to model_dir/previous/<UTC time>/ (for `--restart`).

    Returns:
        The directory they went to, or None when there was nothing to move.
    """
    present = [n for n in RUN_FILES if os.path.exists(os.path.join(model_dir, n))]
    if not present:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = os.path.join(model_dir, PREVIOUS_DIR, stamp)
    suffix = 0
    while os.path.exists(target):
        suffix += 1
        target = os.path.join(model_dir, PREVIOUS_DIR, f"{stamp}.{suffix}")
    os.makedirs(target)
    for name in present:
        os.replace(os.path.join(model_dir, name), os.path.join(target, name))
    return target


def write_file(path: str, data: str | bytes) -> None:
    """Writes `data` (text or bytes) to `path` atomically: a temporary file (fsync'ed when
    local), then a rename, so a kill leaves the old file or the new one. The one atomic write
    of lrtech's files (JSON, flags, PNGs)."""
    mode = "wb" if isinstance(data, bytes) else "w"
    tmp = f"{path}.tmp-{os.getpid()}"
    if is_local(path) and os.path.isdir(path):
        raise UserError(f"{path} is a directory where lrtech writes a file; move it away")
    if not is_local(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(tmp, mode) as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        return
    with open(tmp, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


write_text = write_file  # text files read better at the call sites


def replace_dir(tmp_dir: str, final_dir: str) -> None:
    """Puts the complete directory `tmp_dir` at `final_dir`, replacing what was there.

    A kill between the two renames leaves no `final_dir` (the next run rebuilds it) and the
    old copy under `final_dir.old-*`, which the next call removes.
    """
    parent = os.path.dirname(final_dir) or "."
    base = os.path.basename(final_dir)
    for name in os.listdir(parent):
        if name.startswith(f"{base}.old-"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    old = None
    if os.path.exists(final_dir):
        old = f"{final_dir}.old-{os.getpid()}"
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(directory: str, prefix: str) -> None:
    """Removes `prefix.tmp-*` leftovers of killed runs in `directory`."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith(f"{prefix}.tmp-") or name.startswith(f"{prefix}.old-"):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
