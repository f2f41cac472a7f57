"""The commands' paths: a run's files read where they are, and output paths checked first.

Local paths go through `os` (no TensorFlow import: the commands check their arguments before
it); paths with a URL scheme (gs://, s3://) through TensorFlow's `tf.io.gfile`.

`check_output_file` and `check_output_dir` refuse, in one line naming the flag, an output a
command could not write (a directory where a file is asked for, a file where a directory is,
a missing or read-only parent, /proc), before any heavy work: the error must not come after
minutes of predicting or evaluating.
"""

from __future__ import annotations

import glob as glob_lib
import os

from trainer.errors import UserError
from trainer.run_dir import files as run_dir


def _gfile():
    # Only for paths with a URL scheme; the commands' runtime set-up has run by then.
    from trainer import runtime

    return runtime.import_tensorflow().io.gfile


def isdir(path: str) -> bool:
    return os.path.isdir(path) if run_dir.is_local(path) else _gfile().isdir(path)


def exists(path: str) -> bool:
    return os.path.exists(path) if run_dir.is_local(path) else _gfile().exists(path)


def glob(pattern: str) -> list[str]:
    return glob_lib.glob(pattern) if run_dir.is_local(pattern) else _gfile().glob(pattern)


def read_text(path: str) -> str:
    if run_dir.is_local(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    with _gfile().GFile(path) as f:
        return f.read()


def check_output_file(flag: str, path: str) -> None:
    """Checks that the file `path` can be written (atomically, beside it); creates nothing.

    Raises:
        UserError: `path` is a directory, its directory is missing, a file or not writable.
    """
    if not run_dir.is_local(path):
        return
    flag = f"{flag}={path}"
    if os.path.isdir(path):
        raise UserError(f"{flag}: is a directory, not a file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        raise UserError(f"{flag}: no such directory {parent}")
    if not os.path.isdir(parent):
        raise UserError(f"{flag}: {parent} is a file, not a directory")
    run_dir.check_writable(flag, parent)


def check_output_dir(flag: str, path: str) -> None:
    """Checks that the directory `path` exists or can be created, and can be written; creates
    nothing (the command creates it when it writes). See `run_dir.check_directory`.

    Raises:
        UserError: `path` is a file or lies under one, or the nearest existing directory on
            its way cannot be written.
    """
    if run_dir.is_local(path):
        run_dir.check_directory(flag, path, create=False)
