"""Test session set-up: two logical CPU devices before TensorFlow initializes.

MirroredStrategy(["/cpu:0", "/cpu:1"]) then exercises the replica logic on a CPU-only machine.
This must run before any test module touches a device, hence at conftest import time.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_unused"))

import trainer  # noqa: E402,F401  (its TensorFlow runtime defaults precede the TF import)

NUM_LOGICAL_CPUS = 2


def _configure_logical_cpus():
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )


_configure_logical_cpus()
