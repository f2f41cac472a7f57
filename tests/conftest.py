"""Test session set-up: the runtime defaults, then two logical CPU devices.

`trainer.runtime.configure()` must precede the TensorFlow import (TensorFlow reads its
settings once per process). MirroredStrategy(["/cpu:0", "/cpu:1"]) then exercises the replica
logic on a CPU-only machine; the logical devices must exist before any test module touches a
device, hence at conftest import time.
"""

import gc
import os
import time

import pytest

os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_unused"))

from trainer import runtime  # noqa: E402
from trainer.tools import cli

runtime.configure(quiet=True)

NUM_LOGICAL_CPUS = 2


def _configure_logical_cpus():
    tf = cli.import_tensorflow()  # without Keras' optional sklearn, matplotlib imports
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )


_configure_logical_cpus()
# TensorFlow's and Keras' module-level objects (millions) never become garbage: out of the
# collector's sight, each full collection (below, after every longer test) costs ~0.06 s of
# CPU instead of ~0.35 s.
gc.freeze()


# The suite's longest tests (30-70 s each, measured with --durations), started first: with
# `-n 2`, one of them collected near the end kept one worker busy while the other sat idle.
SLOWEST_FIRST = (
    "tests/test_faults_end_of_run.py::test_kills_around_training_end_as_the_uninterrupted_run",
    "tests/test_run_train.py::test_end_to_end_writes_everything",
    "tests/test_faults.py::test_killed_runs_resume_to_the_uninterrupted_weights",
    "tests/test_quickstart.py::test_quickstart_two_steps_end_to_end_quiet_with_a_summary",
)


def pytest_collection_modifyitems(config, items):
    """Moves `SLOWEST_FIRST` to the front (the same order on every xdist worker)."""
    rank = {nodeid: i for i, nodeid in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid, len(rank)))


@pytest.fixture(autouse=True)
def _free_tf_data_iterators_promptly():
    """Collects the garbage of a test that ran for a while (TensorFlow work) as it ends.

    Experiments, models and distributed datasets sit in reference cycles, so their tf.data
    iterators are freed by a later full garbage collection, in some later test. Freeing an
    iterator waits for its tf.data autotuning thread, which sleeps for an optimization period
    that doubles with the iterator's age up to 60 s: iterators freed minutes late stalled
    the suite for 30 s to 10 minutes at a time without using the CPU (seen in gdb: the main
    thread in RootDataset::Iterator::~Iterator, waiting for the model thread). Freed at the
    end of the test that made them, they are young and the wait is short.
    """
    started = time.perf_counter()
    yield
    if time.perf_counter() - started > 0.5:
        gc.collect()


# Runs shared by several test modules: trained once per process, not once per test. ---------


@pytest.fixture(scope="session")
def bn_straight(tmp_path_factory):
    """test_checkpoints' default run (helpers.BN_RUN, tiny BatchNorm model, 12 steps) without
    interruption: (its state: weights, BN statistics and optimizer variables; its metrics).

    The reference that the resume tests of test_checkpoints and test_lr_tools compare with.
    """
    from tests.helpers import bn_config, bn_experiment, state

    exp = bn_experiment(bn_config(tmp_path_factory.mktemp("bn_straight") / "run"))
    metrics = exp.train()
    return state(exp), metrics


@pytest.fixture(scope="session")
def bn_nine_steps(tmp_path_factory):
    """The same run trained to step 9 with its checkpoints 3, 6 and 9 kept:
    (model_dir, the model's weights at step 9). Tests copy model_dir before changing it."""
    from tests.helpers import bn_config, bn_experiment

    model_dir = tmp_path_factory.mktemp("bn_nine") / "run"
    exp = bn_experiment(bn_config(model_dir, train_steps=9, keep_checkpoints=3))
    exp.train()
    return model_dir, [v.numpy() for v in exp.model.weights]
