"""Test session set-up: the runtime defaults, then two logical CPU devices.

`trainer.runtime.configure()` must precede the TensorFlow import (TensorFlow reads its
settings once per process). MirroredStrategy(["/cpu:0", "/cpu:1"]) then exercises the replica
logic on a CPU-only machine; the logical devices must exist before any test module touches a
device, hence at conftest import time.
"""

import os

import pytest

os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_unused"))

from trainer import cli, runtime  # noqa: E402

runtime.configure(quiet=True)

NUM_LOGICAL_CPUS = 2


def _configure_logical_cpus():
    tf = cli.import_tensorflow()  # without Keras' optional sklearn, matplotlib imports
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )


_configure_logical_cpus()


# Runs shared by several test modules: trained once per process, not once per test. ---------


@pytest.fixture(scope="session")
def bn_straight(tmp_path_factory):
    """test_checkpoints' default run (tiny BatchNorm model, 12 steps) without interruption:
    (its state: weights, BN statistics and optimizer variables; its metrics).

    The reference that the resume tests of test_checkpoints and test_lr_tools compare with.
    """
    from tests.test_checkpoints import config, experiment, state

    exp = experiment(config(tmp_path_factory.mktemp("bn_straight") / "run"))
    metrics = exp.train()
    return state(exp), metrics


@pytest.fixture(scope="session")
def bn_nine_steps(tmp_path_factory):
    """The same run trained to step 9 with its checkpoints 3, 6 and 9 kept:
    (model_dir, the model's weights at step 9). Tests copy model_dir before changing it."""
    from tests.test_checkpoints import config, experiment

    model_dir = tmp_path_factory.mktemp("bn_nine") / "run"
    exp = experiment(config(model_dir, train_steps=9, keep_checkpoints=3))
    exp.train()
    return model_dir, [v.numpy() for v in exp.model.weights]
