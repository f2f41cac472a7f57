"""Reading one batch on demand: folder files by path, TFDS data-source examples by index.

`batch_reader` gives the pipelines of `trainer.data.pipeline` a function from a batch's
indices (and augmentation seeds) to its decoded images and labels. Only the examples of that
batch are read, in parallel inside it; an example that does not read or decode is named, or
skipped and its slot filled, by `trainer.data.corrupt.decode_batch`.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import tensorflow as tf

from trainer.data.corrupt import ReadFailures, decode_batch
from trainer.data.sources import Split

_AUTOTUNE = tf.data.AUTOTUNE


def tfds_fetch(split: Split):
    """indices int64 [b] -> the encoded images string [b] of a data-source split, in order.

    An example the data source fails to read (a damaged record, an I/O error) comes back as
    empty bytes, which the reader treats like an unreadable file: named as
    ``split.root + index`` (e.g. "cifar10 train #123"), or skipped with skip_corrupt. The
    data source's own error is logged once per example.
    """
    source, key = split.source, split.image_key
    logged: set[int] = set()
    lock = threading.Lock()

    def one(index: int) -> bytes:
        try:
            return source.__getitems__([index])[0][key]
        except Exception as e:  # whatever the data source raises for a bad record
            with lock:
                new = index not in logged
                logged.add(index)
            if new:
                logging.getLogger(__name__).warning(
                    "cannot read %s%d from the data source: %s: %s",
                    split.root,
                    index,
                    type(e).__name__,
                    str(e).strip().splitlines()[0] if str(e).strip() else "",
                )
            return b""

    def fetch(indices):
        indices = indices.tolist()
        if not indices:
            return np.array([], dtype=object)
        try:
            examples = [example[key] for example in source.__getitems__(indices)]
        except Exception:
            # One bad record fails the whole call: read the batch one by one to find it.
            examples = [one(i) for i in indices]
        return np.array(examples, dtype=object)

    def contents(indices):
        # The data source is fixed for the run: the same indices give the same bytes.
        out = tf.numpy_function(fetch, [indices], tf.string, stateful=False)
        out.set_shape(indices.shape)
        return out

    return contents


def batch_reader(split: Split, image_size: int, view, failures: ReadFailures, *, fill: bool):
    """(indices [b], seeds [b, 2]) -> (images [b', S, S, 3], labels [b']), read on demand.

    Files are read one by one; a TFDS data source is asked for the batch's encoded images in
    one call (`tfds_fetch`). Failures are named, or skipped with `failures.skip` (filled
    with `fill`), by `decode_batch`.
    """
    labels = tf.constant(split.labels)
    if split.source is not None:
        fetch = tfds_fetch(split)

        def fetched_view(contents, seed):
            # Empty bytes: the data source failed on this example (`tfds_fetch`).
            check = tf.debugging.Assert(tf.strings.length(contents) > 0, ["unreadable"])
            with tf.control_dependencies([check]):
                return view(tf.identity(contents), seed)

        def examples(slots, indices, seeds):
            items = tf.data.Dataset.from_tensor_slices((slots, fetch(indices), seeds))
            return items.map(
                lambda slot, contents, seed: (slot, fetched_view(contents, seed)),
                num_parallel_calls=_AUTOTUNE,
                deterministic=True,
            )

        def names(indices):
            return tf.strings.join([split.root, tf.strings.as_string(indices)])

    else:
        paths = tf.strings.join([split.root, tf.constant(split.files)])

        def examples(slots, indices, seeds):
            return tf.data.Dataset.from_tensor_slices((slots, indices, seeds)).map(
                lambda slot, i, seed: (slot, view(tf.io.read_file(paths[i]), seed)),
                num_parallel_calls=_AUTOTUNE,
                deterministic=True,
            )

        def names(indices):
            return tf.gather(paths, indices)

    def read_batch(indices, seeds):
        slots = tf.range(tf.size(indices))
        return decode_batch(
            examples(slots, indices, seeds),
            names(indices),
            tf.gather(labels, indices),
            image_size,
            failures,
            fill=fill,
        )

    return read_batch
