"""The LR range test (Smith 2017; fastai's `lr_find`).

    from trainer.lr_find import lr_find, LRFinder

* `finder`: the algorithm (exponential sweep, smoothing, stop rule, suggestions) and its
  result (`LRFinderResult`: JSON, plot, suggestion line);
* `custom_loop.lr_find(model, dataset, optimizer)`: the test in a user's own loop;
* `callbacks.LRFinder`: the same inside `model.fit`;
* `range_test`: a run's test (`--lr_find`, `--max_lr=auto`).

Importing this package imports no TensorFlow; `lr_find` and `LRFinder` load on first use.
"""


def __getattr__(name):  # PEP 562: TensorFlow is imported when the name is first used
    if name == "lr_find":
        from trainer.lr_find.custom_loop import lr_find

        return lr_find
    if name == "LRFinder":
        from trainer.lr_find.callbacks import LRFinder

        return LRFinder
    raise AttributeError(f"module 'trainer.lr_find' has no attribute {name!r}")
