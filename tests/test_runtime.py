"""trainer.runtime: `import trainer` changes nothing global; entry points call configure()."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import runtime

ROOT = Path(__file__).resolve().parents[1]

IMPORT_ONLY = """
import os, sys
# The libraries first: what they set (Keras imports scikit-learn when it is installed, which
# sets KMP_* variables) is not ours to judge.
import keras, tensorflow, tensorflow_datasets
before = dict(os.environ)
fd2 = os.fstat(2).st_ino
# models/ is a library layer below trainer/ (DESIGN.md): it never imports it.
import models, schedules
assert not [m for m in sys.modules if m.split(".")[0] == "trainer"], "models imported trainer"
import trainer, trainer.experiment, trainer.flags, trainer.data
assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())
assert os.fstat(2).st_ino == fd2
from trainer import runtime
try:
    runtime.configure()
except RuntimeError as e:
    print("refused:", e)
"""


def test_importing_the_packages_sets_nothing_and_models_stays_below_trainer():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "LRTECH"))}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ONLY],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # TensorFlow is imported, so configuring now would be too late.
    assert "refused: trainer.runtime.configure() must run before TensorFlow" in result.stdout


def test_configure_sets_only_what_is_unset(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(RuntimeError, match="before TensorFlow is imported"):
        runtime.configure()
    monkeypatch.delitem(sys.modules, "tensorflow")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    changed = runtime.configure(quiet=True)
    assert changed == {"TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"  # the user's choice stands


def test_captured_stderr_drops_native_lines_and_keeps_the_rest(capfd):
    with runtime.captured_stderr(drop=("banner",)) as dropped:
        os.write(2, b"a banner line\nkept line\n")
    assert dropped == ["a banner line"]
    assert capfd.readouterr().err == "kept line\n"


def test_quiet_logging_keeps_project_lines_and_errors_only():
    import logging

    from trainer.runtime import _ProjectLines

    def record(pathname, level):
        return logging.LogRecord("absl", level, pathname, 1, "msg", None, None)

    ours = str(ROOT / "trainer" / "checkpoints.py")
    theirs = "/usr/lib/python3/site-packages/tensorflow/python/saved_model/builder_impl.py"
    keep = _ProjectLines()
    assert keep.filter(record(ours, logging.INFO))
    assert keep.filter(record(ours, logging.WARNING))
    assert not keep.filter(record(theirs, logging.INFO))
    assert not keep.filter(record(theirs, logging.WARNING))
    assert keep.filter(record(theirs, logging.ERROR))
