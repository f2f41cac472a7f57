"""tf.data pipelines over a split held in memory (`trainer.data.sources.Split`).

The training stream is a pure function of (seed, global step): epoch e visits a permutation
seeded by (seed, e), truncated to steps_per_epoch whole batches, and each example's
augmentation is seeded by (seed, e, position). So ``train_dataset(start_step=k)`` yields
exactly batches k, k+1, ... of ``train_dataset(start_step=0)``, and the trainer resumes by
step instead of checkpointing an iterator.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer.data.sources import Split
from trainer.errors import UserError

_AUTOTUNE = tf.data.AUTOTUNE


def _loader(split: Split, image_size: int):
    """index -> (float32 [S, S, 3] image in [0, 255], int32 label)."""
    images = tf.constant(split.images)
    labels = tf.constant(split.labels)
    resize = split.encoded or tuple(split.image_shape[:2]) != (image_size, image_size)

    def load(index):
        if split.encoded:
            image = tf.io.decode_image(images[index], channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
        else:
            image = tf.gather(images, index)
        if resize:
            image = tf.image.resize(image, [image_size, image_size], antialias=True)
            image = tf.clip_by_value(image, 0.0, 255.0)
        else:
            image = tf.cast(image, tf.float32)
        return image, tf.gather(labels, index)

    return load


def _augment(image, seed):
    """Zero-pad by S/8, random crop back to S, random horizontal flip; stateless in `seed`."""
    size = image.shape[0]
    pad = max(size // 8, 1)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, [size, size, 3], seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _index_stream(n, global_batch, seed, start_step):
    """(epoch, position, index) for every example of every epoch from `start_step` on."""
    spe = max(n // global_batch, 1)
    per_epoch = spe * global_batch
    start_epoch, offset = divmod(start_step, spe)

    def epoch_examples(epoch):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch])
        )
        # Skip the first epoch's consumed batches by slicing, not by iterating.
        first = tf.where(epoch == start_epoch, tf.constant(offset * global_batch, tf.int64), 0)
        position = tf.range(first, per_epoch, dtype=tf.int64)
        # position % n only wraps when the dataset is smaller than one global batch.
        index = tf.gather(perm, position % n)
        epoch = tf.fill(tf.shape(position), epoch)
        return tf.data.Dataset.from_tensor_slices((epoch, position, index))

    return tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_examples)


def train_dataset(
    split: Split,
    batch_size: int,
    *,
    image_size: int,
    augment: bool,
    seed: int,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """The endless training stream of `split` from global step `start_step` on.

    See `trainer.data.Data.train_dataset`, which calls this with the run's configuration.
    """
    if batch_size < 1 or start_step < 0:
        raise UserError(f"batch_size={batch_size} and start_step={start_step} must be >= 1, >= 0")
    pipelines = input_context.num_input_pipelines if input_context else 1
    global_batch = batch_size * pipelines
    n = len(split.labels)
    ds = _index_stream(n, global_batch, seed, start_step)
    if pipelines > 1:
        lo = input_context.input_pipeline_id * batch_size
        ds = ds.batch(global_batch, drop_remainder=True)
        ds = ds.map(
            lambda e, p, i: (
                e[lo : lo + batch_size],
                p[lo : lo + batch_size],
                i[lo : lo + batch_size],
            )
        ).unbatch()
    load = _loader(split, image_size)

    def example(epoch, position, index):
        image, label = load(index)
        if augment:
            example_seed = tf.stack([tf.constant(seed, tf.int64), epoch * n + position])
            image = _augment(image, example_seed)
        return image, label

    ds = ds.map(example, num_parallel_calls=_AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(_AUTOTUNE)


def eval_dataset(split: Split, batch_size: int, *, image_size: int) -> tf.data.Dataset:
    """`split` once, in order, unaugmented, keeping the last partial batch."""
    load = _loader(split, image_size)
    ds = tf.data.Dataset.range(len(split.labels))
    ds = ds.map(load, num_parallel_calls=_AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=False).prefetch(_AUTOTUNE)


def as_numpy(split: Split, *, image_size: int, limit: int | None = None):
    """The first `limit` (default all) examples of `split` as numpy, unaugmented, in order."""
    n = len(split.labels) if limit is None else min(limit, len(split.labels))
    ds = tf.data.Dataset.range(n).map(_loader(split, image_size), _AUTOTUNE)
    images, labels = [], []
    for x, y in ds.batch(1024).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)
