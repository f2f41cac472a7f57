"""Process set-up for entry points: TensorFlow runtime defaults and a quiet TensorFlow import.

`import trainer` changes nothing global. Programs that train (run_train.py, bench/, the
tests' conftest.py) call `configure()` once, *before* TensorFlow is imported, because
TensorFlow reads these settings once per process, at import and when it creates its CPU
device:

* TF_ENABLE_ONEDNN_OPTS=1: oneDNN kernels on every x86 CPU. TensorFlow switches them on by
  itself only on CPUs with AVX-512 VNNI/BF16 or AMX; elsewhere (e.g. AVX2 machines)
  convolution gradients fall back to Eigen kernels that are several times slower: resnet20
  trained at 163 vs 249 images/s and resnet50's gradients at 14 vs 95 images/s on 2 AVX2
  cores. oneDNN may change float round-off slightly (TensorFlow's own note).
* TF_CPU_ALLOCATOR_USE_BFC=true: host tensors from TensorFlow's pooling (BFC) allocator.
  Without oneDNN, the default allocator page-faulted about 5 million times in 30 steps
  under tf.distribute's input iterators and halved the training speed of resnet8.

Each is set only where the environment does not set it already (set either to 0/false to
keep TensorFlow's own behaviour). Measurements: BENCHMARKS.md ("TensorFlow runtime
defaults"), BUILD.md.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

DEFAULTS = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPU_ALLOCATOR_USE_BFC": "true"}

# Lines TensorFlow's C++ start-up writes to stderr before logging is configured, whatever
# TF_CPP_MIN_LOG_LEVEL says; they would break run_train.py's one-line errors.
_BANNERS = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on.",
)


def configure(*, quiet: bool = False) -> dict[str, str]:
    """Sets the TensorFlow runtime defaults (see the module docstring) where unset.

    Args:
        quiet: Also set TF_CPP_MIN_LOG_LEVEL=2 (no C++ INFO/WARNING lines) where unset.

    Returns:
        The variables this call set (name -> value); empty when all were set already.

    Raises:
        RuntimeError: TensorFlow was imported already, so the settings would not apply.
    """
    if "tensorflow" in sys.modules:
        raise RuntimeError(
            "trainer.runtime.configure() must run before TensorFlow is imported; call it "
            "at the top of the entry point"
        )
    wanted = dict(DEFAULTS)
    if quiet:
        wanted["TF_CPP_MIN_LOG_LEVEL"] = "2"
    changed = {}
    for name, value in wanted.items():
        if name not in os.environ:
            os.environ[name] = value
            changed[name] = value
    return changed


@contextlib.contextmanager
def captured_stderr(drop=()):
    """Captures what C/C++ code writes to file descriptor 2 inside the block.

    Lines containing any string of `drop` are discarded; the rest are written back to
    stderr when the block ends (also when it raises). Use around calls into native code
    that prints unconditionally (TensorFlow's start-up banners, libjpeg's warnings).

    Args:
        drop: Substrings of the lines to discard; `True` discards everything.

    Yields:
        A list that receives the discarded lines once the block ends.
    """
    sys.stderr.flush()
    dropped: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield dropped
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = []
            for line in text.splitlines(keepends=True):
                if drop is True or any(d in line for d in drop):
                    dropped.append(line.rstrip("\n"))
                else:
                    kept.append(line)
            sys.stderr.write("".join(kept))


def import_tensorflow():
    """Imports TensorFlow with its C++ start-up banners dropped from stderr; returns it.

    Everything else TensorFlow writes while importing is passed through unchanged.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with captured_stderr(drop=_BANNERS):
        import tensorflow
    return tensorflow


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This project's code (also when installed into site-packages beside TensorFlow).
_PROJECT_PATHS = tuple(
    os.path.join(_ROOT, name)
    for name in ("trainer" + os.sep, "models" + os.sep, "schedules" + os.sep)
) + (os.path.join(_ROOT, "run_train.py"),)
# Python warnings that TensorFlow, TFDS and Keras raise about their own internals.
_LIBRARY_MODULES = r"(tensorflow|tensorflow_datasets|keras|absl|google\.protobuf|h5py)(\.|$)"


class _ProjectLines:
    """A logging filter: INFO and WARNING from this project's code, ERROR from anyone."""

    def filter(self, record) -> bool:
        import logging

        if record.levelno >= logging.ERROR:
            return True
        return os.path.abspath(record.pathname).startswith(_PROJECT_PATHS)


def quiet_logging(program: str | None = None) -> None:
    """User-facing output for a command-line program at absl's default verbosity.

    Log lines of this project print as plain messages (no absl prefix with thread id and
    file); INFO and WARNING lines of TensorFlow, TFDS and Keras (SavedModel chatter, tf.data
    notes) and their Python warnings are dropped; errors from anyone still show. Call it in
    `main` after absl parsed the flags, and only when `--verbosity` was not given, which
    brings everything back.

    Args:
        program: Unused; reserved for a prefix such as "run_train.py: ".
    """
    import logging
    import warnings

    from absl import logging as absl_logging

    del program
    warnings.filterwarnings("ignore", module=_LIBRARY_MODULES)
    handler = absl_logging.get_absl_handler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_ProjectLines())
