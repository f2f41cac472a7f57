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
"""

__all__ = ["SGDR", "Cosine", "OneCycle", "Phases", "SWALR", "plot_schedule"]

# Public name -> module defining it, imported on first access.
_LAZY = {
    "SGDR": "schedules.sgdr",
    "Cosine": "schedules.cosine",
    "OneCycle": "schedules.one_cycle",
    "Phases": "schedules.phases",
    "SWALR": "schedules.swa",
    "plot_schedule": "schedules.plot",
}


def __getattr__(name):
    # PEP 562 lazy attributes: importing the package must not import TensorFlow (see above).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'schedules' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
