"""tf.data pipelines over a split (`trainer.data.sources.Split`), in memory or read on demand
(folder files, or a TFDS random-access data source).

The training stream is a pure function of (seed, global step): epoch e visits a permutation
seeded by (seed, e), truncated to steps_per_epoch whole batches, and each example's
augmentation is seeded by (seed, e, position). So ``train_dataset(start_step=k)`` yields
exactly batches k, k+1, ... of ``train_dataset(start_step=0)``, and the trainer resumes by
step instead of checkpointing an iterator. This holds whether the images are in memory or
files read on demand: only indices flow through the stream until the examples of one batch
are read.

Under distribution each input pipeline computes the same (cheap) index stream, keeps its
slice of every global batch and reads only those examples (`train_dataset`'s input_context).
An on-demand batch is read by `trainer.data.reading`; an example that does not read or
decode is named or skipped by `trainer.data.corrupt`.

tf.data options, set on every dataset here (`_options`):
  * ``deterministic = True``: parallel map and interleave keep their input order. The order
    is part of the result (exact resume, N workers equal to one).
  * ``threading.private_threadpool_size = os.cpu_count()``: reading and decoding run on their
    own threads, one per core, instead of the shared inter-op pool the training step uses,
    so a long step does not starve the input and the other way round.
  * ``threading.max_intra_op_parallelism = 1``: each decode/resize runs on one thread; the
    parallelism is across examples (``num_parallel_calls=AUTOTUNE``), which scales better
    for many small ops. Per-pixel results do not depend on it.
  * ``autotune.enabled = False``: no autotuning model thread. Destroying an iterator waits
    for that thread's sleep, whose period doubles with the iterator's age up to 60 s: a run
    lingered up to a minute after "Done", and the test suite stalled for minutes, while old
    iterators were freed. Without it ``num_parallel_calls=AUTOTUNE`` runs one call per
    thread of the private pool (one per core) and ``prefetch(AUTOTUNE)`` grows its buffer
    when the consumer waits; the input rate measured the same within noise.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from trainer.data import images as image_ops
from trainer.data import reading
from trainer.data.corrupt import ReadFailures, user_errors
from trainer.data.sources import Split
from trainer.errors import UserError

_AUTOTUNE = tf.data.AUTOTUNE


def _options() -> tf.data.Options:
    """The options above; made per dataset (nothing TensorFlow runs at import)."""
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = os.cpu_count() or 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    return options


def _in_memory_loader(split: Split, image_size: int):
    """index -> (float32 [S, S, 3] image in [0, 255], int32 label), small-data path."""
    images = tf.constant(split.images)
    labels = tf.constant(split.labels)
    resize = split.encoded or tuple(split.image_shape[:2]) != (image_size, image_size)

    def load(index):
        if split.encoded:
            image = image_ops.decode(images[index])
        else:
            image = tf.gather(images, index)
        if resize:
            image = image_ops.resize(image, image_size)
        else:
            image = tf.cast(image, tf.float32)
        return image, tf.gather(labels, index)

    return load


def _views(split: Split, image_size: int, augment: bool, eval_crop: float):
    """(train_view(contents, seed), eval_view(contents)) of encoded bytes -> [S, S, 3]."""

    def eval_view(contents):
        return image_ops.eval_view(contents, image_size, eval_crop, split.encoded)

    if image_ops.full_resolution(split.encoded, image_size):

        def train_view(contents, seed):
            if augment:
                return image_ops.random_resized_crop(contents, image_size, seed)
            return eval_view(contents)

        return train_view, eval_view

    def train_view(contents, seed):
        image = eval_view(contents)
        return image_ops.pad_crop_flip(image, seed) if augment else image

    return train_view, eval_view


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


def _shares(batch_size: int, input_context: tf.distribute.InputContext | None):
    """(global batch, first example of this pipeline's share, share size) of each step."""
    if input_context is None:
        return batch_size, 0, batch_size
    pipelines = input_context.num_input_pipelines
    replicas = input_context.num_replicas_in_sync
    local = max(replicas // pipelines, 1)  # replicas fed by this pipeline
    share = batch_size * local
    return share * pipelines, input_context.input_pipeline_id * share, share


def train_indices(
    n: int,
    batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """The (epoch, position, index) of every example `train_dataset` reads, in its order.

    Of each global batch only this pipeline's share: the examples it reads and decodes.
    """
    global_batch, lo, share = _shares(batch_size, input_context)
    ds = _index_stream(n, global_batch, seed, start_step)
    if share != global_batch:
        ds = ds.batch(global_batch, drop_remainder=True)
        ds = ds.map(lambda e, p, i: (e[lo : lo + share], p[lo : lo + share], i[lo : lo + share]))
        ds = ds.unbatch()
    return ds


def train_dataset(
    split: Split,
    batch_size: int,
    *,
    image_size: int,
    augment: bool,
    seed: int,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    eval_crop: float = 0.875,
    failures: ReadFailures | None = None,
) -> tf.data.Dataset:
    """The endless training stream of `split` from global step `start_step` on.

    See `trainer.data.Data.train_dataset`, which calls this with the run's configuration.
    With `input_context` of R = num_replicas_in_sync / num_input_pipelines local replicas,
    `batch_size` is the per-replica batch and each step yields R consecutive batches: the
    pipeline's share of the global batch, in the order its replicas take them.
    """
    if batch_size < 1 or start_step < 0:
        raise UserError(f"batch_size={batch_size} and start_step={start_step} must be >= 1, >= 0")
    n = len(split.labels)
    ds = train_indices(n, batch_size, seed=seed, start_step=start_step, input_context=input_context)

    def example_seed(epoch, position):
        step = epoch * n + position
        return tf.stack([tf.fill(tf.shape(step), tf.constant(seed, tf.int64)), step], axis=-1)

    if split.on_demand:
        failures = failures or ReadFailures("--dataset", skip=False)
        view, _ = _views(split, image_size, augment, eval_crop)
        read = reading.batch_reader(split, image_size, view, failures, fill=True)
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = ds.map(
            lambda e, p, i: read(i, example_seed(e, p)),
            num_parallel_calls=_AUTOTUNE,
            deterministic=True,
        )
        return ds.prefetch(_AUTOTUNE).with_options(_options())
    if image_ops.full_resolution(split.encoded, image_size):
        view, _ = _views(split, image_size, augment, eval_crop)
        images, labels = tf.constant(split.images), tf.constant(split.labels)

        def example(epoch, position, index):
            return view(images[index], example_seed(epoch, position)), labels[index]

    else:
        load = _in_memory_loader(split, image_size)

        def example(epoch, position, index):
            image, label = load(index)
            if augment:
                image = image_ops.pad_crop_flip(image, example_seed(epoch, position))
            return image, label

    ds = ds.map(example, num_parallel_calls=_AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(_AUTOTUNE).with_options(_options())


def eval_indices(
    n: int, batch_size: int, input_context: tf.distribute.InputContext | None = None
) -> tf.data.Dataset:
    """int64 index vectors: the examples of each batch `eval_dataset` yields, in order.

    Without `input_context`: ceil(n / b) batches [k*b, min((k+1)*b, n)), the last partial.
    With it (N replicas over W pipelines, R = N / W local replicas, global batch B = N*b):
    for each of the ceil(n / B) global batches of the single-pipeline pass, pipeline i
    yields R vectors, replica j's slice [g*B + (i*R + j)*b, ... + b) clipped to n. Every
    pipeline yields the same number of vectors (R per global batch), so the replicas step
    together; near the end a slice may be short or empty. The union over all pipelines and
    replicas is range(n), each index exactly once.
    """
    global_batch, lo, share = _shares(batch_size, input_context)
    local = share // batch_size
    batches = -(-n // global_batch)  # ceil

    def indices(k):
        start = (k // local) * global_batch + lo + (k % local) * batch_size
        return tf.range(tf.minimum(start, n), tf.minimum(start + batch_size, n))

    return tf.data.Dataset.range(batches * local).map(indices)


def _batch_reader(example, image_size: int, label_dtype):
    """indices [k] -> (images [k, S, S, 3], labels [k]) by the per-example `example(index)`.

    The same per-example function as the unsharded pipeline (so the pixels are identical),
    run in parallel inside the batch; k may be 0.
    """
    empty = (tf.zeros([0, image_size, image_size, 3], tf.float32), tf.zeros([0], label_dtype))

    def read(indices):
        size = tf.cast(tf.maximum(tf.size(indices), 1), tf.int64)
        inner = tf.data.Dataset.from_tensor_slices(indices).map(
            example, num_parallel_calls=_AUTOTUNE, deterministic=True
        )
        inner = inner.batch(size).concatenate(tf.data.Dataset.from_tensors(empty)).take(1)
        return inner.get_single_element()

    return read


def eval_dataset(
    split: Split,
    batch_size: int,
    *,
    image_size: int,
    eval_crop: float = 0.875,
    failures: ReadFailures | None = None,
    limit: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """`split` once (its first `limit` examples), in order, unaugmented, with the last partial
    batch. Unreadable files of an on-demand split are dropped when `failures.skip`.

    With `input_context` (for `distribute_datasets_from_function`), `batch_size` is the
    per-replica batch and this pipeline reads and decodes only its replicas' slices of each
    global batch (`eval_indices`): R batches per global batch, some short or empty at the
    end. An evaluation that sums over replicas (`trainer.loop.compiled.EvalLoop`) then counts every
    example exactly once, as one device does.
    """
    n = len(split.labels) if limit is None else min(limit, len(split.labels))
    _, view = _views(split, image_size, False, eval_crop)
    if split.on_demand:
        failures = failures or ReadFailures("--dataset", skip=False)
        read = reading.batch_reader(split, image_size, lambda c, _: view(c), failures, fill=False)
        if input_context is None:
            ds = tf.data.Dataset.range(n).batch(batch_size)
        else:
            ds = eval_indices(n, batch_size, input_context)
        ds = ds.map(
            lambda i: read(i, tf.zeros([tf.size(i), 2], tf.int64)),
            num_parallel_calls=_AUTOTUNE,
            deterministic=True,
        )
        return ds.prefetch(_AUTOTUNE).with_options(_options())
    if image_ops.full_resolution(split.encoded, image_size):
        images, labels = tf.constant(split.images), tf.constant(split.labels)

        def example(i):
            return view(images[i]), labels[i]

    else:
        example = _in_memory_loader(split, image_size)
    if input_context is not None:
        read = _batch_reader(example, image_size, tf.as_dtype(split.labels.dtype))
        ds = eval_indices(n, batch_size, input_context)
        ds = ds.map(read, num_parallel_calls=_AUTOTUNE, deterministic=True)
        return ds.prefetch(_AUTOTUNE).with_options(_options())
    ds = tf.data.Dataset.range(n).map(example, _AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=False).prefetch(_AUTOTUNE).with_options(_options())


def eval_preprocessing(split: Split, image_size: int) -> str:
    """How `eval_dataset` turns one image of `split` into the model's input.

    "center_crop": the centered square of side eval_crop x the shorter side, resized
    (bilinear) to S (`images.center_crop`, the full-resolution regime). "resize": the whole
    image resized (antialiased) to S. `trainer.tools.predict` follows this (export/labels.json).
    """
    return image_ops.eval_preprocessing(split.encoded, image_size)


def as_numpy(
    split: Split,
    *,
    image_size: int,
    limit: int | None = None,
    eval_crop=0.875,
    failures: ReadFailures | None = None,
):
    """The first `limit` (default all) examples of `split` as numpy, as evaluation sees them
    (unreadable on-demand examples dropped when `failures.skip`).

    Raises:
      UnreadableImageError: an on-demand example does not read or decode (without skip).
    """
    ds = eval_dataset(
        split, 1024, image_size=image_size, eval_crop=eval_crop, limit=limit, failures=failures
    )
    images, labels = [], []
    with user_errors():
        for x, y in ds.as_numpy_iterator():
            images.append(x)
            labels.append(y)
    return np.concatenate(images), np.concatenate(labels)
