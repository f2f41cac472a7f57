"""The two things benchmarks compare: the lrtech trainer and Keras `model.fit`, on equal terms.

Both sides get the same model (`models.build`, same seed), the same in-memory data (the
synthetic split: `trainer.data.Data.as_numpy` hands fit exactly the pixels the trainer's pipeline
gathers), the same global batch, optimizer and SGDR schedule, and both count accuracy.

* `Trainer`: an `Experiment` built from a `Config` as run_train.py would, then its trainer's
  public `train(num_steps)` called in chunks of `steps_per_loop` (its own input pipeline:
  endless, shuffled per epoch, distributed with the strategy), exactly as the controller
  drives it between boundaries.
* `Fit`: `model.compile(optimizer, loss, metrics=["accuracy"])` then `model.fit(x, y,
  batch_size, epochs=1, shuffle=True)` per repetition, the way users train on arrays.

`timed_epoch()` on both gives (images, seconds) for `common.alternate`: the trainer's by the
wall clock around its loop calls, fit's from its epoch's begin to its end (a callback), since
the set-up of a `fit()` call is paid once per call, not per epoch, in real training.
`Trainer.run_floor` is the compute floor (fixed batch, no pipeline, no metrics; `Floor` on
any model) and `Trainer.run_updates` the optimizer update alone. `keras_batch_norm` gives a
model back with Keras' own BatchNormalization, to measure the fused layer against it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import models
from schedules import SGDR
from trainer import data
from trainer.config import Config
from trainer.experiment import Experiment
from trainer.loop import strategy as strategy_lib
from trainer.lr import optimizers

NUM_CLASSES = 10
LR = 1e-3
CYCLE_STEPS = 1000  # SGDR first cycle, identical on both sides


def tmpdir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=f"lrtech_bench_{prefix}_")


def make_config(model: str, batch: int, examples: int, **overrides) -> Config:
    """A run configuration on the synthetic in-memory set, no augmentation by default."""
    fields = dict(
        model_dir=tmpdir(model),
        dataset=f"synthetic:{NUM_CLASSES}",
        synthetic_train_size=examples,
        synthetic_test_size=max(batch, 256),
        augment=False,
        model=model,
        num_classes=NUM_CLASSES,
        global_batch_size=batch,
        train_steps=10**6,
        optimizer="adam",
        max_lr=LR,
        first_cycle_steps=CYCLE_STEPS,
        progress=False,
    )
    fields.update(overrides)
    return Config(**fields)


def even_splits(model: keras.Model, segments: int) -> tuple[str, ...]:
    """`segments - 1` split indices spreading the weighted layers evenly."""
    from trainer.lr import segments as segments_lib

    rows = [r for r in segments_lib.layer_rows(model, ()) if r.trainable_params]
    if segments > len(rows):
        raise ValueError(f"{segments} segments need at least as many weighted layers")
    cut = [rows[round(i * len(rows) / segments)].index for i in range(1, segments)]
    return tuple(str(i) for i in cut)


class Trainer:
    """The trainer's compiled loop on its own pipeline; `run_epoch()` -> images trained.

    Args:
        config: A `Config` (see `make_config`).
        strategy: A tf.distribute strategy; default `make_strategy(config.strategy)`.
    """

    def __init__(self, config: Config, strategy=None):
        self.config = config
        self.strategy = strategy or strategy_lib.make_strategy(config.strategy)
        self.exp = Experiment(config, self.strategy).build()
        self.info = self.exp.info
        self.steps_per_epoch = data.steps_per_epoch(self.info, config.global_batch_size)
        self.variables = list(self.exp.trainer.trainable_variables)
        self._updates = None
        self._floor = None

    def _repeat(self, fn):
        """A compiled loop: `n` times `strategy.run(fn)`; returns the optimizer's step count."""
        strategy, optimizer = self.strategy, self.exp.optimizer

        @tf.function
        def repeat(n):
            for _ in tf.range(n):
                strategy.run(fn)
            return optimizer.iterations.value

        return repeat

    def run_floor(self, steps: int) -> int:
        """The compute floor: `steps` steps on one fixed batch, nothing else; returns images.

        `Floor` on the experiment's model and optimizer, under the trainer's strategy, with
        the first batch of the training arrays. No training loop can beat this rate on the
        same model, batch and device.
        """
        if self._floor is None:
            batch = self.config.global_batch_size
            x, y = self.exp.data.as_numpy("train")
            self._floor = Floor(
                self.exp.model, self.exp.optimizer, x[:batch], y[:batch], self.strategy
            )
        return self._floor.run(steps)

    def run_updates(self, steps: int) -> int:
        """Applies the optimizer `steps` times to fixed gradients (no forward or backward).

        Each update runs in replica context under the strategy, as in the training step, so
        this isolates exactly the part of a step that differential learning rates change.
        Returns `steps`.
        """
        if self._updates is None:
            optimizer, variables = self.exp.optimizer, self.variables
            grads = [tf.fill(v.shape, tf.constant(1e-3, v.dtype)) for v in variables]

            self._updates = self._repeat(lambda: optimizer.apply(grads, variables))
        self._updates(tf.constant(steps, tf.int32)).numpy()
        return steps

    def run_steps(self, steps: int) -> int:
        """Trains `steps` steps in loops of at most `steps_per_loop`; returns images seen."""
        done = 0
        while done < steps:
            n = min(self.config.steps_per_loop, steps - done)
            self.exp.trainer.train(n)  # raises NonFiniteError on a NaN/inf loss
            done += n
        return done * self.config.global_batch_size

    def run_epoch(self) -> int:
        return self.run_steps(self.steps_per_epoch)

    def timed_epoch(self) -> tuple[int, float]:
        """One epoch: (images, wall seconds around the loop calls that trained them)."""
        start = time.perf_counter()
        images = self.run_epoch()
        return images, time.perf_counter() - start

    def checkpoint(self, step: int) -> str:
        """Saves a checkpoint at `step`; returns its path prefix."""
        return self.exp.checkpointer.save(step, self.exp.model)

    def close(self) -> None:
        shutil.rmtree(self.config.model_dir, ignore_errors=True)


class Floor:
    """A compute floor: training steps on one fixed batch held in memory; `run(steps)`.

    Forward, backward and the optimizer update in one compiled loop under `strategy` (the
    default strategy when None), on `images`/`labels` held as constants: no input pipeline,
    no accuracy, no per-step outputs.

    Args:
        model: The model to train (built under `strategy`'s scope when one is given).
        optimizer: Its optimizer (see `floor_optimizer`).
        images: One batch of float32 pixels [B, S, S, 3].
        labels: Its int labels [B].
        strategy: A tf.distribute strategy, or None.
    """

    def __init__(self, model, optimizer, images, labels, strategy=None):
        strategy = strategy or tf.distribute.get_strategy()
        self.batch = int(images.shape[0])
        images, labels = tf.constant(images), tf.constant(labels)
        variables = model.trainable_variables

        def step():
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = tf.reduce_mean(
                    keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
                )
            optimizer.apply(tape.gradient(loss, variables), variables)

        @tf.function
        def repeat(n):
            for _ in tf.range(n):
                strategy.run(step)
            return optimizer.iterations.value

        self._repeat = repeat

    def run(self, steps: int) -> int:
        """Trains `steps` steps on the fixed batch; returns images (steps * batch)."""
        self._repeat(tf.constant(steps, tf.int32)).numpy()
        return steps * self.batch


def floor_optimizer(config: Config, model: keras.Model) -> keras.optimizers.Optimizer:
    """The optimizer and schedule `Fit` uses, built for `model`'s trainable variables."""
    schedule = SGDR(LR, CYCLE_STEPS, min_lr=config.min_lr, cycle_mult=config.cycle_mult)
    optimizer = optimizers.make(config.optimizer, schedule, momentum=config.momentum)
    optimizer.build(model.trainable_variables)
    return optimizer


def keras_batch_norm(model: keras.Model) -> keras.Model:
    """A copy of a flat functional `model` whose fused BatchNormalization layers
    (`models.layers.BatchNormalization`) are Keras' own, same config and weights.

    Every other layer is a new instance of its class with the same config and weights.
    """
    from models.layers import BatchNormalization

    def clone(layer):
        cls = type(layer)
        if cls is BatchNormalization:
            cls = keras.layers.BatchNormalization
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy


class _EpochClock(keras.callbacks.Callback):
    """Seconds of fit's last epoch, from `on_epoch_begin` to `on_epoch_end`."""

    seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self._start


class Fit:
    """Keras `model.fit` on the same model, arrays, batch, optimizer and schedule.

    Args:
        config: The same `Config` the `Trainer` side uses (model, batch, data, optimizer).
        steps_per_execution: Keras' batches per compiled call (1 is its default).
        jit_compile: Keras' XLA switch ("auto" is its default: off on CPU-only machines).
    """

    def __init__(self, config: Config, *, steps_per_execution=1, jit_compile="auto"):
        self.config = config
        source = data.load(config)
        self.x, self.y = source.as_numpy("train")
        self.steps_per_epoch = data.steps_per_epoch(source.info, config.global_batch_size)
        n = self.steps_per_epoch * config.global_batch_size
        self.x, self.y = self.x[:n], self.y[:n]
        keras.utils.set_random_seed(config.seed)
        self.model = models.build(
            config.model, NUM_CLASSES, image_size=config.image_size, weights="none"
        )
        schedule = SGDR(LR, CYCLE_STEPS, min_lr=config.min_lr, cycle_mult=config.cycle_mult)
        optimizer = optimizers.make(config.optimizer, schedule, momentum=config.momentum)
        self._clock = _EpochClock()
        self.call_overheads = []  # per timed_epoch: the fit() call's seconds outside its epoch
        self.model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
        )

    def run_epoch(self) -> int:
        return self.run_steps(self.steps_per_epoch)

    def timed_epoch(self) -> tuple[int, float]:
        """One epoch: (images, seconds from fit's epoch begin to its epoch end).

        The epoch's own work (iterator, steps, metrics, callbacks) is timed; the rest of the
        `fit()` call (data adapter, callbacks set-up and tear-down) is not, since users pay
        it once per `fit()`, not once per epoch. It is kept in `call_overheads`.
        """
        start = time.perf_counter()
        images = self.run_epoch()
        self.call_overheads.append(time.perf_counter() - start - self._clock.seconds)
        return images, self._clock.seconds

    def run_steps(self, steps: int) -> int:
        """Trains `steps` steps (fit's epoch over the first steps * batch examples)."""
        n = steps * self.config.global_batch_size
        if n > len(self.x):
            raise ValueError(f"{steps} steps need {n} examples, have {len(self.x)}")
        history = self.model.fit(
            self.x[:n],
            self.y[:n],
            batch_size=self.config.global_batch_size,
            epochs=1,
            shuffle=True,
            verbose=0,
            callbacks=[self._clock],
        )
        if not np.isfinite(history.history["loss"][-1]):
            raise FloatingPointError("non-finite loss in benchmark run")
        return n

    def close(self) -> None:
        pass


@contextlib.contextmanager
def closing(*things):
    try:
        yield things
    finally:
        for t in things:
            t.close()


def pipeline_rate(config: Config, batches: int) -> int:
    """Pulls `batches` batches of the trainer's training pipeline; returns images produced."""
    dataset = data.load(config).train_dataset(config.global_batch_size).take(batches)
    n = 0
    for images, _ in dataset:
        n += int(images.shape[0])
    return n


def write_image_folder(root: str, examples: int, size: int, num_classes: int, seed: int = 0):
    """root/{train,test}/<class>/<i>.jpg: JPEG-encoded random images, for decode benchmarks."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", examples), ("test", max(examples // 8, num_classes))):
        for i in range(n):
            label = i % num_classes
            folder = os.path.join(root, split, f"class_{label:02d}")
            os.makedirs(folder, exist_ok=True)
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            jpeg = tf.io.encode_jpeg(pixels, quality=90).numpy()
            with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as f:
                f.write(jpeg)
    return root
