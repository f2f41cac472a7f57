"""Loading a prepared TFDS image-classification split: into memory, or on demand.

`tfds_split` returns a `trainer.data.sources.Split`: the images in memory, or (``--cache=none``,
or ``auto`` above `sources.CACHE_BUDGET_BYTES`) what reads them on demand: the labels and a
random-access data source of an ArrayRecord-prepared split, from which the pipeline fetches
each image by index; or, for TFRecord-prepared data (no random access), the split's files,
read by the streaming pipeline of `trainer.data.streaming`. Never downloads; TFDS's INFO
logging is silenced while loading.
"""

from __future__ import annotations

import contextlib
import difflib
import logging

import numpy as np
import tensorflow as tf

from trainer import runtime
from trainer.data import sources, streaming
from trainer.data.sources import Split
from trainer.errors import UserError


def _tfds_builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)
        close = difflib.get_close_matches(name.split(":")[0].split("/")[0], known, n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"--dataset={name}: no such TFDS dataset (nor folder:PATH / synthetic){hint}"
        ) from None


def _not_prepared(name: str, data_dir: str | None) -> UserError:
    where = data_dir or "~/tensorflow_datasets"
    return UserError(
        f"--dataset={name}: not prepared in {where}; on a machine with internet run "
        f"`tfds build {name} --data_dir=DIR`, copy DIR here and pass --data_dir=DIR"
    )


@contextlib.contextmanager
def _tfds_info_silenced():
    """Raises the `absl` logger, which TFDS logs through, to WARNING inside the block.

    TFDS logs INFO lines ("Constructing tf.data.Dataset ...", "Failed to load dataset ...")
    that run_train.py's absl set-up prints; before a failed load they would precede its
    one-line error. The level is restored afterwards, also when the block raises.
    """
    logger = logging.getLogger("absl")
    saved = logger.level
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(saved)


def tfds_split(
    name: str, data_dir: str | None, split: str, cache: str = "memory", skip_corrupt=False
) -> Split:
    """Loads a prepared TFDS image-classification split (never downloads), logging no INFO.

    `cache` "memory" reads the split into memory (decoded when its images have one shape and
    fit `sources.MAX_DECODED_BYTES`, else encoded). "none" reads it on demand: an
    ArrayRecord-prepared split keeps its labels and a random-access data source
    (`builder.as_data_source`; images are fetched by index in the pipeline), a
    TFRecord-prepared one keeps only its file list and is read as a stream
    (`trainer.data.streaming`). "auto" holds the split in memory when what memory would hold
    (decoded pixels, or the encoded bytes when shapes vary) fits `sources.CACHE_BUDGET_BYTES`.

    Raises:
      UserError: unknown dataset, not prepared in data_dir, bad split, not (image, label),
        files of a streamed split missing, an image that does not decode in a split decoded
        into memory (unless `skip_corrupt`: then it is left out, counted and logged).
    """
    with _tfds_info_silenced():
        return _read_tfds(name, data_dir, split, cache, skip_corrupt)


def _split_size(info, split: str) -> tuple[int, int]:
    """(examples, encoded bytes) of a split from the dataset info; (0, 0) when unknown."""
    try:
        return info.splits[split].num_examples, int(info.splits[split].num_bytes)
    except (KeyError, ValueError, TypeError):
        return 0, 0  # Unknown until loaded (e.g. under tfds.testing.mock_data).


def _read_tfds(name: str, data_dir: str | None, split: str, cache: str, skip: bool) -> Split:
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    info = builder.info
    keys = info.supervised_keys
    if not keys or len(keys) != 2:
        raise UserError(f"--dataset={name}: not a supervised (image, label) dataset")
    image_key, label_key = keys
    image_shape = tuple(info.features[image_key].shape)
    names = getattr(info.features[label_key], "names", None)
    if not names:
        raise UserError(f"--dataset={name}: label {label_key!r} is not a class label")
    class_names = tuple(names)
    if len(image_shape) != 3 or image_shape[-1] not in (1, 3):
        raise UserError(f"--dataset={name}: images of shape {image_shape} are not HxWx1/3")
    num, num_bytes = _split_size(info, split)
    fixed = None not in image_shape
    decoded_bytes = num * int(np.prod(image_shape[:2])) * 3 if fixed else 0
    encoded = not fixed or decoded_bytes > sources.MAX_DECODED_BYTES
    held = num_bytes if encoded else decoded_bytes
    if cache == "none" or (cache == "auto" and held > sources.CACHE_BUDGET_BYTES):
        try:
            source, labels = _data_source(builder, name, split, (image_key, label_key))
        except NotImplementedError:  # no random access (TFRecord), or not prepared at all
            if not builder.is_prepared():
                raise _not_prepared(name, data_dir) from None
            return Split(
                None,
                np.zeros([0], np.int32),
                encoded,
                class_names,
                (*image_shape[:2], 3),
                root=f"{name} {split}",
                records=_records(builder, name, split, (image_key, label_key)),
            )
        return Split(
            None,
            labels,
            encoded,
            class_names,
            (*image_shape[:2], 3),
            root=f"{name} {split} #",
            source=source,
            image_key=image_key,
        )
    if _is_array_record(builder.info):
        # ArrayRecord files have no tf.data reader (`as_dataset` raises): read the data source.
        source, labels = _data_source(builder, name, split, (image_key, label_key))
        images = _fetch_all(source, image_key, len(labels))
        return _held(images, labels, encoded, class_names, image_shape, (name, split), skip)
    # The images stay encoded here and are decoded below, by the pipeline's own decoder.
    decoders = {image_key: tfds.decode.SkipDecoding()}
    try:
        ds = builder.as_dataset(split=split, as_supervised=True, decoders=decoders)
    except AssertionError:
        raise _not_prepared(name, data_dir) from None
    except ValueError as e:
        raise UserError(f"--dataset={name}: bad split {split!r} ({e})") from None
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(1024)):
        images.append(x)
        labels.append(y)
    if not labels:
        raise UserError(f"--dataset={name}: split {split!r} is empty")
    images = np.concatenate(images).astype(object)
    labels = np.concatenate(labels).astype(np.int32)
    return _held(images, labels, encoded, class_names, image_shape, (name, split), skip)


def _held(encoded_images, labels, encoded, class_names, image_shape, where, skip) -> Split:
    """The in-memory `Split` of encoded images: kept encoded, or (not `encoded`) decoded.

    Decoding names an image that does not decode ("NAME SPLIT #i"; `where` is (NAME,
    SPLIT)), or with `skip` leaves it out, counted in `num_skipped` with a warning, as a
    folder read into memory does.
    """
    name, split = where
    shape = (*image_shape[:2], 3)
    if encoded:
        return Split(encoded_images, labels, True, class_names, shape)
    images, kept = _decode_all(encoded_images)
    bad = np.setdiff1d(np.arange(len(labels)), kept)
    if len(bad) and not skip:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise UserError(
            f"--dataset={name}: cannot decode image {name} {split} #{bad[0]}{more} "
            "(pass --skip_corrupt to leave such images out)"
        )
    warnings = ()
    if len(bad):
        warnings = (
            f"{name} {split}: skipped {len(bad)} images that do not decode, e.g. #{bad[0]}",
        )
    if not len(kept):
        raise UserError(f"--dataset={name}: no image of split {split!r} decodes")
    return Split(images, labels[kept], False, class_names, shape, len(bad), warnings)


def _decode_all(encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [K, H, W, 3] images, int64 [K] their indices) of the images that decode, by the
    pipeline's own decoder, so on-demand reads give the same pixels."""
    n = len(encoded)
    ds = tf.data.Dataset.from_tensor_slices((tf.range(n, dtype=tf.int64), encoded))
    ds = ds.map(
        lambda i, contents: (i, tf.io.decode_image(contents, channels=3, expand_animations=False)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    indices, images = [], []
    # libjpeg prints its complaints straight to fd 2; the error or warning above names them.
    with runtime.captured_stderr(drop=True):
        for i, x in ds.ignore_errors().batch(1024).as_numpy_iterator():
            indices.append(i)
            images.append(x)
    if not indices:
        return np.zeros([0, 1, 1, 3], np.uint8), np.zeros([0], np.int64)
    return np.concatenate(images), np.concatenate(indices)


def _records(builder, name: str, split: str, keys: tuple[str, str]) -> streaming.Records:
    """The TFRecord files (and slice of each) of a prepared split, for streaming."""
    try:
        instructions = builder.info.splits[split].file_instructions
    except (KeyError, ValueError) as e:
        raise UserError(f"--dataset={name}: bad split {split!r} ({e})") from None
    instructions = [i for i in instructions if i.take]
    if not instructions:
        raise UserError(f"--dataset={name}: split {split!r} is empty")
    missing = [i.filename for i in instructions if not tf.io.gfile.exists(i.filename)]
    if missing:
        raise UserError(
            f"--dataset={name}: {len(missing)} file(s) of split {split!r} are missing, "
            f"e.g. {missing[0]}; prepare it again (`tfds build {name}`)"
        )
    return streaming.Records(
        files=tuple(str(i.filename) for i in instructions),
        skip=tuple(int(i.skip) for i in instructions),
        take=tuple(int(i.take) for i in instructions),
        image_key=keys[0],
        label_key=keys[1],
    )


def _is_array_record(info) -> bool:
    file_format = getattr(info, "file_format", None)
    return getattr(file_format, "value", file_format) == "array_record"


def _fetch_all(source, image_key: str, n: int) -> np.ndarray:
    """Every image of a data source, encoded: bytes [N]."""
    encoded = []
    for start in range(0, n, _CHUNK):
        examples = source.__getitems__(list(range(start, min(start + _CHUNK, n))))
        encoded.extend(example[image_key] for example in examples)
    return np.array(encoded, dtype=object)


_CHUNK = 4096  # records read from a data source per call at start-up


def _data_source(builder, name: str, split: str, keys: tuple[str, str]):
    """(data source with the image left encoded, int32 labels [N]) of a prepared split.

    `name` is the --dataset value for messages; `keys` are the (image, label) feature names.

    The labels are read once: every record of the split is read as raw bytes (one
    sequential pass over the files, no image decoded) and only the label feature is parsed,
    in chunks, by `tf.io.parse_example`.
    """
    import tensorflow_datasets as tfds

    image_key, label_key = keys
    try:
        source = builder.as_data_source(
            split=split, decoders={image_key: tfds.decode.SkipDecoding()}
        )
        raw = builder.as_data_source(
            split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
    except ValueError as e:
        raise UserError(f"--dataset={name}: bad split {split!r} ({e})") from None
    n = len(raw)
    if not n:
        raise UserError(f"--dataset={name}: split {split!r} is empty")
    spec = {label_key: tf.io.FixedLenFeature([], tf.int64)}
    labels = []
    for start in range(0, n, _CHUNK):
        records = raw.__getitems__(list(range(start, min(start + _CHUNK, n))))
        labels.append(tf.io.parse_example(tf.constant(records), spec)[label_key].numpy())
    return source, np.concatenate(labels).astype(np.int32)
