"""What several test modules share: tiny models, tiny run configs, built Experiments, strategies,
worker processes on localhost and absl log capture.

Each test module keeps what is its own (its run's sizes, split points and multipliers, passed
to `tiny_config`); only the repeated code lives here.
"""

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras

from trainer.config import Config
from trainer.experiment import Experiment
from trainer.loop.strategy import make_strategy

ROOT = Path(__file__).resolve().parents[1]
TWO_CPUS = ["/cpu:0", "/cpu:1"]  # conftest's two logical CPU devices


def two_replicas():
    """MirroredStrategy over conftest's two logical CPUs: the replica logic on one machine."""
    return make_strategy("mirrored", devices=TWO_CPUS)


# Tiny models (8x8x3 inputs) ------------------------------------------------------------------


def tiny_model(num_classes):
    """conv -> mid -> head, no BatchNorm: its per-replica batch statistics legitimately differ
    from one device's, which would blur replica-vs-single-device comparisons."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu", name="mid"),
            keras.layers.Dense(num_classes, name="head"),
        ]
    )


def tiny_bn_model(num_classes):
    """conv -> BatchNorm -> head: the run whose exact resume covers BN statistics too."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, name="head"),
        ]
    )


# Tiny runs -------------------------------------------------------------------------------------


def tiny_config(model_dir, **changes):
    """A tiny run on the synthetic data: 8x8 images, 64 train and 16 eval examples, global
    batches of 16 (4 steps an epoch), 4 steps a compiled loop, no progress bar. Tests pass their
    own length, schedule and segments as `changes`."""
    base = dict(
        model_dir=str(model_dir),
        image_size=8,
        synthetic_train_size=64,
        synthetic_test_size=16,
        global_batch_size=16,
        max_lr=0.01,
        steps_per_loop=4,
        progress=False,
    )
    return Config(**{**base, **changes})


# test_checkpoints' run of `tiny_bn_model`, which test_ema, test_lr_tools, test_swa and the
# session fixtures in conftest reuse: 12 steps, SGDR cycles of 3 and 6 steps, two segments.
BN_RUN = dict(
    train_steps=12,
    first_cycle_steps=3,
    split_at=("bn",),
    lr_mults=(0.1, 1.0),
    checkpoint_every_steps=3,
    keep_checkpoints=2,
)


def bn_config(model_dir, **changes):
    """`tiny_config` of the BN_RUN (test_checkpoints' default run)."""
    return tiny_config(model_dir, **{**BN_RUN, **changes})


def build(cfg, model_fn=tiny_model, strategy=None, plots=False):
    """The built Experiment of `cfg` on one device (or `strategy`).

    Without `plots`, its end-of-run plots are skipped: they cost seconds a run and are tested
    in test_experiment.
    """
    exp = Experiment(cfg, strategy or make_strategy("one_device"), model_fn=model_fn).build()
    if not plots:
        exp.interpret = lambda: {}
    return exp


def restored(cfg, model_fn=tiny_model, strategy=None):
    """`build`, then restored from cfg.model_dir (a new run writes its config.json)."""
    exp = build(cfg, model_fn, strategy)
    exp.restore()
    return exp


def trained(cfg, model_fn=tiny_model, strategy=None):
    """`restored`, then trained: (the Experiment, its metrics)."""
    exp = restored(cfg, model_fn, strategy)
    return exp, exp.train()


def bn_experiment(cfg):
    """The restored Experiment of `tiny_bn_model` (the BN_RUN's model) on one device."""
    return restored(cfg, tiny_bn_model)


def state(exp):
    """Every weight (BN statistics included) and every optimizer variable, as NumPy arrays."""
    return [v.numpy() for v in exp.model.weights] + [v.numpy() for v in exp.optimizer.variables]


# Worker processes: a MultiWorkerMirroredStrategy cluster on localhost ---------------------------


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(script, argv_of):
    """Starts `script` as each task of a two-worker cluster (TF_CONFIG) on localhost, with
    the arguments `argv_of(index)`; returns the processes (stdout and stderr together)."""
    workers = [f"localhost:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES="")
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *argv_of(index)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def wait_for(procs, timeout=240):
    """Waits for each process; each must exit 0 (its last output is the failure message)."""
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out[-3000:]


# absl log capture -------------------------------------------------------------------------------


@contextlib.contextmanager
def absl_messages(level):
    """Yields the list that collects the messages absl logs at `level` or above meanwhile."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler, logger = Keep(level), logging.getLogger("absl")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
