"""Learning-rate schedules: `SGDR` (cosine annealing with warm restarts) and plotting.

`from schedules import SGDR` gives a Keras `LearningRateSchedule` usable as the
`learning_rate` of any Keras optimizer. TensorFlow is imported on first use of `SGDR`, so
`python -m schedules.plot --help` and its flag errors answer without loading TensorFlow.
"""

__all__ = ["SGDR", "plot_schedule"]


def __getattr__(name):
    # PEP 562 lazy attributes: importing the package must not import TensorFlow (see above).
    if name == "SGDR":
        from schedules.sgdr import SGDR

        return SGDR
    if name == "plot_schedule":
        from schedules.plot import plot_schedule

        return plot_schedule
    raise AttributeError(f"module 'schedules' has no attribute {name!r}")
