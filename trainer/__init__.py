"""The lrtech trainer: differential learning rates and SGDR in a compiled tf.distribute loop.

Importing this package changes nothing global (no environment variable, no file descriptor).
Entry points that train call `trainer.runtime.configure()` before importing TensorFlow to get
the CPU runtime defaults this project measured (see `trainer.runtime` and BUILD.md).

The package's parts and who may import whom: BUILD.md, "Architecture".
"""
