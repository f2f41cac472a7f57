"""Learning-rate schedules and plotting.

* `SGDR`: cosine annealing with warm restarts (optional warmup, peak decay);
* `Cosine`: linear warmup, then one cosine decay to a floor that is held;
* `OneCycle`: fastai's one-cycle policy, with `momentum(step)` for momentum cycling;
* `Phases`: schedules one after another, each on its own step counter (fastai's fine_tune);
* `SWALR`: a schedule that switches to a constant rate at a step (SWA's `--swa_lr`);
* `plot_schedule`: a PNG of a schedule's learning rate per step.

`from schedules import OneCycle` gives a Keras `LearningRateSchedule` usable as the
`learning_rate` of any Keras optimizer. TensorFlow is imported on first use of a schedule, so
`python -m schedules.plot --help` and its flag errors answer without loading TensorFlow.

Loading a saved model whose optimizer uses one of these schedules needs the classes
registered with Keras: `import trainer.optimizers` registers them (and the segmented
optimizers), so does `import schedules` once Keras is imported, and `schedules.register()`
does it at any time.
"""

__all__ = ["SGDR", "Cosine", "OneCycle", "Phases", "SWALR", "plot_schedule", "register"]

# Public name -> module defining it, imported on first access.
_LAZY = {
    "SGDR": "schedules.sgdr",
    "Cosine": "schedules.cosine",
    "OneCycle": "schedules.one_cycle",
    "Phases": "schedules.phases",
    "SWALR": "schedules.swa",
    "plot_schedule": "schedules.plot",
}


def register() -> None:
    """Registers every schedule class with Keras (`keras.saving.load_model` then finds them);
    imports them, and with them Keras and TensorFlow."""
    import importlib

    for module in sorted(set(_LAZY.values()) - {"schedules.plot"}):
        importlib.import_module(module)


def _register_if_keras_is_loaded() -> None:
    import sys

    if "keras" in sys.modules:  # Keras is loaded already: registering costs nothing more
        register()


_register_if_keras_is_loaded()


def __getattr__(name):
    # PEP 562 lazy attributes: importing the package must not import TensorFlow (see above).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'schedules' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
