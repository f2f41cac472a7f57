"""Input pipelines: a TFDS dataset, a folder of the user's images, or the synthetic set.

Dataset specs (``--dataset``):
  * a TFDS image-classification name (``cifar10``, ``cifar100``, ``oxford_flowers102`` ...),
    read from a prepared ``--data_dir`` (never downloaded here: see `trainer.data_sources`);
  * ``folder:PATH`` with images in PATH/<split>/<label>/*.{jpg,jpeg,png,bmp,gif}; labels are
    the sorted class directories of the train split;
  * ``synthetic`` or ``synthetic:K``: generated offline (`trainer.data_synthetic`).

Splits are loaded once per process into memory (`trainer.data_sources.Split`) and the
training pipeline gathers from them by index. The training stream is a pure function of
(config.seed, global step): epoch e visits a permutation seeded by (seed, e), truncated to
steps_per_epoch whole batches, and each example's augmentation is seeded by (seed, e,
position). So ``train_dataset(start_step=k)`` yields exactly batches k, k+1, ... of
``train_dataset(start_step=0)``, and the trainer resumes by step instead of checkpointing an
iterator.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from trainer import data_sources
from trainer.errors import UserError

_AUTOTUNE = tf.data.AUTOTUNE
_CACHE: dict[tuple, data_sources.Split] = {}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset before building a model.

    image_shape is the native (H, W, 3) shape, None for sizes that vary; pipelines resize to
    config.image_size. num_skipped counts unreadable files skipped with skip_corrupt.
    """

    name: str
    num_classes: int
    num_train: int
    num_eval: int
    image_shape: tuple[int | None, int | None, int]
    class_names: tuple[str, ...]
    num_skipped: int = 0


def _load(
    dataset, data_dir, split, skip_corrupt, synthetic_size, train_split
) -> data_sources.Split:
    key = (dataset, data_dir, split, skip_corrupt, synthetic_size, train_split)
    if key not in _CACHE:
        if dataset == "synthetic" or dataset.startswith("synthetic:"):
            _CACHE[key] = data_sources.synthetic(dataset, split, synthetic_size)
        elif dataset.startswith("folder:"):
            root = dataset[len("folder:") :]
            names = data_sources.folder_class_names(root, train_split)
            _CACHE[key] = data_sources.folder_split(root, split, names, skip_corrupt)
        else:
            _CACHE[key] = data_sources.tfds_split(dataset, data_dir, split)
    return _CACHE[key]


def _config_split(config, which: str) -> data_sources.Split:
    split = config.train_split if which == "train" else config.eval_split
    size = config.synthetic_train_size if which == "train" else config.synthetic_test_size
    return _load(
        config.dataset, config.data_dir, split, config.skip_corrupt, size, config.train_split
    )


def get_info(
    dataset: str,
    data_dir: str | None = None,
    train_split: str = "train",
    eval_split: str = "test",
    *,
    skip_corrupt: bool = False,
    synthetic_train_size: int = 2048,
    synthetic_test_size: int = 512,
) -> DatasetInfo:
    """Loads both splits (cached for the pipelines) and describes the dataset.

    Raises:
      UserError: unknown or unprepared dataset, missing folder, unreadable image, bad split.
    """
    args = (dataset, data_dir)
    train = _load(*args, train_split, skip_corrupt, synthetic_train_size, train_split)
    test = _load(*args, eval_split, skip_corrupt, synthetic_test_size, train_split)
    shape = train.image_shape if train.image_shape == test.image_shape else (None, None, 3)
    return DatasetInfo(
        name=dataset,
        num_classes=len(train.class_names),
        num_train=len(train.labels),
        num_eval=len(test.labels),
        image_shape=tuple(shape),
        class_names=train.class_names,
        num_skipped=train.num_skipped + test.num_skipped,
    )


def info_from_config(config) -> DatasetInfo:
    """`get_info` with the dataset fields of a `trainer.config.Config`."""
    return get_info(
        config.dataset,
        config.data_dir,
        config.train_split,
        config.eval_split,
        skip_corrupt=config.skip_corrupt,
        synthetic_train_size=config.synthetic_train_size,
        synthetic_test_size=config.synthetic_test_size,
    )


def steps_per_epoch(info: DatasetInfo, global_batch_size: int) -> int:
    """Whole global batches per epoch (the remainder of each epoch is dropped), at least 1."""
    return max(info.num_train // global_batch_size, 1)


def _loader(split: data_sources.Split, image_size: int):
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
    config,
    info: DatasetInfo,
    batch_size: int,
    *,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """The endless, augmented training stream from global step `start_step` on.

    Args:
      config: a `trainer.config.Config` (dataset fields, image_size, augment, seed).
      info: `get_info` of the same dataset.
      batch_size: examples per batch this dataset yields: the global batch when the trainer
        uses `experimental_distribute_dataset`, the per-pipeline batch with `input_context`.
      start_step: global step of the first batch.
      input_context: for `distribute_datasets_from_function`: pipeline i of W yields slice
        [i*b, (i+1)*b) of each global batch of W*b examples, so the union over pipelines at
        every step is exactly the single-pipeline global batch.

    Returns:
      A dataset of (float32 [b, S, S, 3] pixels in [0, 255], int32 [b] labels), S =
      config.image_size, drop_remainder=True, repeating over epochs.
    """
    if batch_size < 1 or start_step < 0:
        raise UserError(f"batch_size={batch_size} and start_step={start_step} must be >= 1, >= 0")
    split = _config_split(config, "train")
    pipelines = input_context.num_input_pipelines if input_context else 1
    global_batch = batch_size * pipelines
    ds = _index_stream(len(split.labels), global_batch, config.seed, start_step)
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
    load = _loader(split, config.image_size)
    n = len(split.labels)

    def example(epoch, position, index):
        image, label = load(index)
        if config.augment:
            seed = tf.stack([tf.constant(config.seed, tf.int64), epoch * n + position])
            image = _augment(image, seed)
        return image, label

    ds = ds.map(example, num_parallel_calls=_AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(_AUTOTUNE)


def eval_dataset(config, info: DatasetInfo, batch_size: int) -> tf.data.Dataset:
    """The evaluation split once, in order, unaugmented, keeping the last partial batch."""
    del info  # The split comes from config; info is kept for a uniform signature.
    split = _config_split(config, "eval")
    load = _loader(split, config.image_size)
    ds = tf.data.Dataset.range(len(split.labels))
    ds = ds.map(load, num_parallel_calls=_AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=False).prefetch(_AUTOTUNE)


def as_numpy(config, info: DatasetInfo, split: str = "train", limit: int | None = None):
    """In-memory (images float32 [N, S, S, 3] in [0, 255], labels int32 [N]), unaugmented.

    For benchmarks against `model.fit`. `split` is "train" or "eval"; `limit` caps N.
    """
    if split not in ("train", "eval"):
        raise UserError(f"split={split!r} must be 'train' or 'eval'")
    del info
    source = _config_split(config, split)
    n = len(source.labels) if limit is None else min(limit, len(source.labels))
    ds = tf.data.Dataset.range(n).map(_loader(source, config.image_size), _AUTOTUNE)
    images, labels = [], []
    for x, y in ds.batch(1024).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)
