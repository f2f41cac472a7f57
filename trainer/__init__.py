"""The lrtech trainer: differential learning rates and SGDR in a compiled tf.distribute loop.

Importing this package sets two TensorFlow runtime defaults (only where the environment does
not set them already; set either to 0/false to keep TensorFlow's own). TensorFlow reads them
once per process, when it is imported or creates its CPU device, so import `trainer` before
`tensorflow` (run_train.py, the tests and the benchmarks do):

* TF_ENABLE_ONEDNN_OPTS=1: oneDNN kernels on every x86 CPU. TensorFlow switches them on by
  itself only on CPUs with AVX-512 VNNI/BF16 or AMX; elsewhere (e.g. AVX2 machines)
  convolution gradients fall back to Eigen kernels that are several times slower: resnet20
  trained at 163 vs 249 images/s and resnet50's gradients at 14 vs 95 images/s on 2 AVX2
  cores. oneDNN may change float round-off slightly (TensorFlow's own note).
* TF_CPU_ALLOCATOR_USE_BFC=true: host tensors from TensorFlow's pooling (BFC) allocator.
  Without oneDNN, the default allocator page-faulted about 5 million times in 30 steps
  under tf.distribute's input iterators and halved the training speed of resnet8.

Measurements: BENCHMARKS.md ("TensorFlow runtime defaults"), BUILD.md.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

# Lines TensorFlow's C++ start-up writes to stderr before logging is configured, whatever
# TF_CPP_MIN_LOG_LEVEL says; they would break run_train.py's one-line errors.
_BANNERS = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on.",
)


def import_tensorflow():
    """Imports TensorFlow with its C++ start-up banners dropped from stderr; returns it.

    Everything else TensorFlow writes while importing is passed through unchanged.
    """
    import sys
    import tempfile

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    kept = [line for line in text.splitlines(keepends=True) if not any(b in line for b in _BANNERS)]
    sys.stderr.write("".join(kept))
    return tensorflow
