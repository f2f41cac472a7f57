"""Input data: a TFDS dataset, the user's images or arrays, or the synthetic set.

Dataset specs (``--dataset``):
  * a TFDS image-classification name (``cifar10``, ``cifar100``, ``oxford_flowers102`` ...),
    read from a prepared ``--data_dir`` (never downloaded here: see `trainer.data.sources`);
  * ``folder:PATH`` with images in PATH/<split>/<label>/*.{jpg,jpeg,png,bmp,gif}; labels are
    the sorted class directories of the train split;
  * ``npz:PATH``: a NumPy .npz with x_train, y_train, x_test, y_test [, class_names];
  * ``idx:DIR``: MNIST-style IDX files (train-images-idx3-ubyte[.gz], t10k-..., ...), e.g.
    Debian's dataset-fashion-mnist in /usr/share/datasets/fashion-mnist;
  * ``sklearn_digits``: scikit-learn's 1,797 real 8x8 digit scans, a fixed 80/20 split
    (the last three: real data read offline, see `trainer.data.arrays`);
  * ``synthetic`` or ``synthetic:K``: generated offline (`trainer.data.synthetic`).

``--train_split`` / ``--eval_split`` name TFDS splits, folder subdirectories, npz keys
(x_<split>, y_<split>) or IDX file prefixes (``test`` also reads ``t10k-*``).

`load` returns a `Data` that the caller owns (there is no module-level cache: two loads are
two independent copies). ``--cache`` decides what it holds: every image in memory, or
(``--cache=none`` or ``auto`` above `sources.CACHE_BUDGET_BYTES`) only the sorted file list of
a folder or the labels and a random-access data source of an ArrayRecord-prepared TFDS split,
each image read on demand. Either way its pipelines gather from the splits by index and are a
pure function of (seed, step); see `trainer.data.pipeline` and docs/DATA.md.

Example:
    source = data.load(config)
    dataset = source.train_dataset(config.global_batch_size, start_step=step)
    steps = data.steps_per_epoch(source.info, config.global_batch_size)
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from trainer import config as config_lib
from trainer.config import Config
from trainer.data import arrays, corrupt, pipeline, sources, streaming, tfds_source
from trainer.errors import UserError

_log = logging.getLogger(__name__)


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


class Data:
    """Both splits of one dataset in memory, and the pipelines of one run over them.

    Made by `load`. The pipelines use the configuration given at load time: image_size (every
    image is resized to it), augment and seed (the training order and augmentation),
    eval_crop (full-resolution evaluation) and skip_corrupt (files unreadable when read on
    demand: an error naming them, or skipped and listed in `skipped_on_read`).

    An on-demand example that does not read or decode when its batch is built (without
    skip_corrupt) makes iterating `train_dataset` or `eval_dataset` raise
    `tf.errors.InvalidArgumentError`, also from inside a compiled loop over the distributed
    dataset; `corrupt.user_error(e)` is then its one-line `corrupt.UnreadableImageError` (a
    `UserError`) naming the example. `as_numpy` raises that directly.
    """

    def __init__(self, config: Config, train: sources.Split, evaluation: sources.Split):
        """Wraps loaded splits.

        Args:
          config: the run's configuration; its dataset, image_size, augment and seed are used.
          train: the training split.
          evaluation: the evaluation split (its labels follow the training split's classes).
        """
        self._train = train
        self._eval = evaluation
        self._image_size = config.input_size
        self._augment = config.augment
        self._seed = config.seed
        self._eval_crop = config.eval_crop
        self._failures = corrupt.ReadFailures(f"--dataset={config.dataset}", config.skip_corrupt)
        same = train.image_shape == evaluation.image_shape
        shape = train.image_shape if same else (None, None, 3)
        self.info = DatasetInfo(
            name=config.dataset,
            num_classes=len(train.class_names),
            num_train=train.num_examples,
            num_eval=evaluation.num_examples,
            image_shape=tuple(shape),
            class_names=train.class_names,
            num_skipped=train.num_skipped + evaluation.num_skipped,
        )

    def train_dataset(
        self,
        batch_size: int,
        *,
        start_step: int = 0,
        input_context: tf.distribute.InputContext | None = None,
        augment: bool | None = None,
    ) -> tf.data.Dataset:
        """The endless, augmented training stream from global step `start_step` on.

        Epoch e visits a permutation seeded by (seed, e), truncated to whole global batches;
        each example's augmentation is seeded by (seed, e, position). So
        `train_dataset(b, start_step=k)` yields exactly batches k, k+1, ... of
        `train_dataset(b)`.

        Args:
          batch_size: examples per batch this dataset yields: the global batch without
            `input_context`, the per-replica batch with it.
          start_step: global step of the first batch.
          input_context: for `distribute_datasets_from_function`, with N replicas over W
            pipelines (R = N / W local replicas each): pipeline i reads and yields only slice
            [i*R*b, (i+1)*R*b) of each global batch of N*b examples, as R consecutive batches
            of b (MirroredStrategy hands a pipeline's consecutive elements to its local
            replicas in turn). The union over pipelines at every step is exactly the
            single-pipeline global batch, in replica order.
          augment: None for the run's --augment; False gives the same order without
            augmentation (e.g. to recompute BatchNorm statistics after weight averaging).

        Returns:
          A dataset of (float32 [b, S, S, 3] pixels in [0, 255], int32 [b] labels), S =
          image_size, drop_remainder=True, repeating over epochs.

        Raises:
          UserError: batch_size < 1 or start_step < 0.
        """
        augment = self._augment if augment is None else augment
        if self._train.records is not None:
            train_view, _ = pipeline._views(self._train, self._image_size, augment, self._eval_crop)
            return streaming.train_dataset(
                self._train.records,
                batch_size,
                train_view=train_view,
                image_size=self._image_size,
                failures=self._failures,
                seed=self._seed,
                start_step=start_step,
                input_context=input_context,
                options=pipeline._options(),
            )
        return pipeline.train_dataset(
            self._train,
            batch_size,
            image_size=self._image_size,
            augment=augment,
            seed=self._seed,
            start_step=start_step,
            input_context=input_context,
            eval_crop=self._eval_crop,
            failures=self._failures,
        )

    def train_indices(
        self,
        batch_size: int,
        *,
        start_step: int = 0,
        input_context: tf.distribute.InputContext | None = None,
    ) -> tf.data.Dataset:
        """(epoch, position, index) of each example `train_dataset` with these arguments reads."""
        if self._train.records is not None:
            raise UserError(
                f"--dataset={self.info.name}: a TFRecord split read as a stream has no indices"
            )
        return pipeline.train_indices(
            len(self._train.labels),
            batch_size,
            seed=self._seed,
            start_step=start_step,
            input_context=input_context,
        )

    @property
    def skipped_on_read(self) -> list[str]:
        """Files found unreadable while the pipelines ran (with skip_corrupt), sorted."""
        return self._failures.paths

    @property
    def nbytes(self) -> int:
        """Bytes both splits hold in memory (pixels or encoded files, labels, file names)."""
        return self._train.nbytes + self._eval.nbytes

    @property
    def eval_preprocessing(self) -> str:
        """How evaluation views an image: "resize" or "center_crop" (`images.eval_preprocessing`),
        what an export's labels.json records for `trainer.tools.predict`."""
        return pipeline.eval_preprocessing(self._eval, self._image_size)

    def eval_dataset(
        self, batch_size: int, *, input_context: tf.distribute.InputContext | None = None
    ) -> tf.data.Dataset:
        """The evaluation split once, in order, unaugmented, keeping the last partial batch.

        With `input_context`, `batch_size` is the per-replica batch and this pipeline reads
        (decodes, for a TFRecord stream) only its replicas' slices of each global batch; see
        `trainer.data.pipeline.eval_dataset`.
        """
        if self._eval.records is not None:
            _, eval_view = pipeline._views(self._eval, self._image_size, False, self._eval_crop)
            return streaming.eval_dataset(
                self._eval.records,
                batch_size,
                eval_view=eval_view,
                image_size=self._image_size,
                failures=self._failures,
                input_context=input_context,
                options=pipeline._options(),
            )
        return pipeline.eval_dataset(
            self._eval,
            batch_size,
            image_size=self._image_size,
            eval_crop=self._eval_crop,
            failures=self._failures,
            input_context=input_context,
        )

    def as_numpy(self, split: str = "train", limit: int | None = None):
        """In-memory (images float32 [N, S, S, 3] in [0, 255], labels int32 [N]), unaugmented.

        For benchmarks against `model.fit`. `split` is "train" or "eval"; `limit` caps N.

        Raises:
          UserError: an unknown split.
        """
        if split not in ("train", "eval"):
            raise UserError(f"split={split!r} must be 'train' or 'eval'")
        source = self._train if split == "train" else self._eval
        if source.records is not None:
            _, eval_view = pipeline._views(source, self._image_size, False, self._eval_crop)
            ds = streaming.eval_dataset(
                source.records,
                1024,
                eval_view=eval_view,
                image_size=self._image_size,
                failures=self._failures,
                limit=limit,
            )
            with corrupt.user_errors():
                batches = list(ds.as_numpy_iterator())
            images, labels = zip(*batches)
            return np.concatenate(images), np.concatenate(labels)
        return pipeline.as_numpy(
            source,
            image_size=self._image_size,
            limit=limit,
            eval_crop=self._eval_crop,
            failures=self._failures,
        )


def _load_split(config: Config, split: str, synthetic_size: int, class_names) -> sources.Split:
    dataset = config.dataset
    if dataset == "synthetic" or dataset.startswith("synthetic:"):
        return sources.synthetic(dataset, split, synthetic_size)
    if dataset.startswith("folder:"):
        root = dataset[len("folder:") :]
        return sources.folder_split(root, split, class_names, config.skip_corrupt, config.cache)
    return tfds_source.tfds_split(
        dataset, config.data_dir, split, config.cache, config.skip_corrupt
    )


def _check_classes(dataset: str, split: str, train: sources.Split | None = None, names=None):
    """A classifier needs two classes: one class name, or training labels of one class only
    (a stream's labels are not read), would train a model that cannot be wrong."""
    names = train.class_names if names is None else names
    need = "a classifier needs at least 2 (as --num_classes does)"
    if len(names) < 2:
        raise UserError(f"--dataset={dataset}: has one class ({names[0]}); {need}")
    present = np.unique(train.labels) if train is not None else ()
    if len(present) == 1:
        raise UserError(
            f"--dataset={dataset}: has one class ({names[present[0]]}) in its {split} split "
            f"(of {len(names)} class names); {need}"
        )


def load(config: Config) -> Data:
    """Loads both splits of `config.dataset`: into memory, or their file lists (`--cache`).

    Prints nothing before it fails: warnings (empty class directories, skipped files) are
    logged only after both splits have loaded, and TFDS's INFO logging is silenced.

    Args:
      config: the run's configuration (dataset, data_dir, train_split, eval_split, cache,
        skip_corrupt, synthetic_train_size, synthetic_test_size, image_size, augment, seed,
        eval_crop).

    Returns:
      The `Data` of both splits; `Data.info` describes them.

    Raises:
      UserError: bad --cache or --eval_crop, unknown or unprepared dataset, missing folder or
        file, unreadable image (read into memory, or found by the start-up check of a
        folder read on demand), one class only, malformed array or IDX file, bad labels,
        bad split, scikit-learn missing for sklearn_digits; each as one line naming the flag
        and the bad value.
    """
    if config.cache not in config_lib.CACHE_POLICIES:
        raise UserError(
            f"--cache={config.cache}: must be one of {', '.join(config_lib.CACHE_POLICIES)}"
        )
    if not 0 < config.eval_crop <= 1:
        raise UserError(f"--eval_crop={config.eval_crop}: must be in (0, 1]")
    if arrays.is_spec(config.dataset):
        train, evaluation = arrays.load(config.dataset, config.train_split, config.eval_split)
        _check_classes(config.dataset, config.train_split, train)
        return Data(config, train, evaluation)
    class_names = None
    if config.dataset.startswith("folder:"):
        # Labels follow the train split's class directories, also in the eval split.
        root = config.dataset[len("folder:") :]
        class_names = sources.folder_class_names(root, config.train_split)
        _check_classes(config.dataset, config.train_split, names=class_names)
    train = _load_split(config, config.train_split, config.synthetic_train_size, class_names)
    _check_classes(config.dataset, config.train_split, train)
    evaluation = _load_split(config, config.eval_split, config.synthetic_test_size, class_names)
    for message in train.warnings + evaluation.warnings:
        _log.warning("%s", message)
    if train.records is not None:
        _log.info(
            "--dataset=%s: %s is prepared as TFRecord and read as a stream of %d files "
            "(resuming re-reads up to one epoch; the batches depend on the number of workers; "
            "ArrayRecord data is read by index instead: docs/DATA.md)",
            config.dataset,
            config.train_split,
            len(train.records.files),
        )
    return Data(config, train, evaluation)


def steps_per_epoch(info: DatasetInfo, global_batch_size: int) -> int:
    """Whole global batches per epoch (the remainder of each epoch is dropped), at least 1."""
    return max(info.num_train // global_batch_size, 1)
