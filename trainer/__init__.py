"""The lrtech trainer: differential learning rates and SGDR in a compiled tf.distribute loop.

Importing this package changes nothing global (no environment variable, no file descriptor).
Entry points that train call `trainer.runtime.configure()` before importing TensorFlow to get
the CPU runtime defaults this project measured (see `trainer.runtime` and BUILD.md).
"""


def __getattr__(name):
    # `trainer.lr_find(model, dataset, optimizer)`, the LR range test for a custom loop, without
    # importing TensorFlow on `import trainer` (PEP 562).
    if name == "lr_find":
        from trainer.lr_find.finder import lr_find

        return lr_find
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
