"""`trainer.optimizers`, the design card's public path of `trainer.lr.optimizers`.

    optimizer = trainer.optimizers.segmented(keras.optimizers.SGD(SGDR(...)), segment_of, lr_mults)

Importing it registers the segmented optimizer classes (and the schedules) with Keras, so a
model compiled with one loads with `keras.saving.load_model`.
"""

from trainer.lr.optimizers import (  # noqa: F401
    OPTIMIZERS,
    make,
    mults_from_spread,
    reset_slots,
    segmented,
    supports_cycle_momentum,
)
