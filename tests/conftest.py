"""Test session set-up: the runtime defaults, then two logical CPU devices.

`trainer.runtime.configure()` must precede the TensorFlow import (TensorFlow reads its
settings once per process). MirroredStrategy(["/cpu:0", "/cpu:1"]) then exercises the replica
logic on a CPU-only machine; the logical devices must exist before any test module touches a
device, hence at conftest import time.
"""

import os

os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_unused"))

from trainer import runtime  # noqa: E402

runtime.configure(quiet=True)

NUM_LOGICAL_CPUS = 2


def _configure_logical_cpus():
    tf = runtime.import_tensorflow()
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )


_configure_logical_cpus()
