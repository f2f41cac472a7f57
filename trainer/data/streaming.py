"""The streaming pipeline of a TFDS split prepared as TFRecord and too large for memory.

TFRecord files have no random access, so the index-based pipeline of `trainer.data.pipeline`
cannot serve them without holding the split. This is the standard streaming pipeline
instead: file-interleaved shards and a shuffle buffer, made a pure function of (seed, step,
number of input pipelines) so the trainer still resumes by step:

  * Each input pipeline owns a fixed set of the split's files (file i goes to pipeline
    i mod W; with fewer files than pipelines every pipeline reads all of them and keeps every
    W-th record). Its records form one endless stream, epoch after epoch.
  * Epoch e of a pipeline visits its files in an order shuffled by (seed, e), reads
    `CYCLE_LENGTH` of them at a time, one record from each in turn (deterministic
    interleave), and passes the records through a shuffle buffer of `SHUFFLE_BUFFER`
    records: the buffer fills and is emitted in a random order seeded by (seed, e, block),
    then fills again (`_shuffle_blocks`, stateless: it does not depend on TensorFlow's global
    seed). The buffer is emptied at the end of every epoch, so epoch e depends on nothing
    before it.
  * Global step k takes records [k*s, (k+1)*s) of every pipeline's stream (s = its share of
    the global batch). Each example's augmentation is seeded by (seed, pipeline, position).
  * To start at step k the pipeline rebuilds epoch e = k*s // n (n = its records) and skips
    the first k*s mod n records before decoding anything. Resuming is therefore exact, at the
    price of re-reading up to one epoch of (encoded) records per pipeline.

What it does not guarantee, unlike the index-based pipeline:
  * the global batch depends on the number of input pipelines (workers): W workers read
    other examples at step k than one worker does (replicas on one machine share one
    pipeline, so 1 or 8 GPUs of one machine see the same batches);
  * an epoch is not a uniform permutation, only as random as the file order and the
    buffer make it; and the trainer's epoch of n // global batch steps drifts from the
    pipelines' own epochs by the remainder.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from trainer.data.corrupt import decode_batch
from trainer.errors import UserError

# Records held by each pipeline's shuffle buffer (encoded images: about 1.1 GB of ImageNet
# JPEGs at 110 KB each); Model Garden's ImageNet input uses the same size.
SHUFFLE_BUFFER = 10_000
# Files each pipeline reads at a time, one record from each in turn.
CYCLE_LENGTH = 16
_AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class Records:
    """Where a split's records are: TFRecord files and the slice of each to read.

    `files` are full paths; records [skip[i], skip[i] + take[i]) of file i belong to the
    split (a split such as ``train[:10%]`` reads a slice). `image_key` / `label_key` are the
    features of a serialized `tf.train.Example`; images are stored encoded.
    """

    files: tuple[str, ...]
    skip: tuple[int, ...]
    take: tuple[int, ...]
    image_key: str
    label_key: str

    @property
    def num_examples(self) -> int:
        return int(sum(self.take))

    def share(self, pipeline: int, pipelines: int) -> tuple[Records, int, int]:
        """(the files pipeline `pipeline` of `pipelines` reads, keep every k-th, from j).

        File sharding when there are at least as many files as pipelines, else every
        pipeline reads all files and keeps records j, j + k, ... (k = pipelines, j = pipeline).
        """
        if pipelines <= 1:
            return self, 1, 0
        if len(self.files) >= pipelines:
            pick = slice(pipeline, None, pipelines)
            mine = dataclasses.replace(
                self, files=self.files[pick], skip=self.skip[pick], take=self.take[pick]
            )
            return mine, 1, 0
        return self, pipelines, pipeline

    def pipeline_examples(self, pipeline: int, pipelines: int) -> int:
        """Records in pipeline `pipeline`'s stream per epoch."""
        mine, every, first = self.share(pipeline, pipelines)
        n = mine.num_examples
        return (n - first + every - 1) // every if every > 1 else n


def _parse(records: Records):
    spec = {
        records.image_key: tf.io.FixedLenFeature([], tf.string),
        records.label_key: tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(serialized):
        example = tf.io.parse_single_example(serialized, spec)
        return example[records.image_key], tf.cast(example[records.label_key], tf.int32)

    return parse


def _read(ids, files, skip, take, *, cycle_length: int):
    """(record, file id, record number in its file) of `files` (each sliced), interleaved one
    record per file in turn; `ids` name the files (indices into `Records.files`)."""

    def one_file(i, f, s, t):
        numbers = tf.data.Dataset.range(s, s + t)
        ds = tf.data.Dataset.zip((tf.data.TFRecordDataset(f).skip(s).take(t), numbers))
        return ds.map(lambda record, number: (record, i, number))

    instructions = tf.data.Dataset.from_tensor_slices((ids, files, skip, take))
    return instructions.interleave(
        one_file,
        cycle_length=cycle_length,
        block_length=1,
        num_parallel_calls=_AUTOTUNE,
        deterministic=True,
    )


def record_names(records: Records):
    """(file ids, record numbers) -> names for messages: "FILE record N" (FILE's base name)."""
    base = tf.constant([os.path.basename(f) for f in records.files])

    def names(ids, numbers):
        return tf.strings.join(
            [tf.gather(base, ids), tf.strings.as_string(numbers)], separator=" record "
        )

    return names


def _shuffle_blocks(ds: tf.data.Dataset, size: int, key) -> tf.data.Dataset:
    """Fills a buffer of `size` elements and emits it in a random order, block after block
    (the last block partial). Block j's permutation is seeded by (key, j).

    A stateless shuffle buffer: `Dataset.shuffle` takes its seeds through TensorFlow's
    global seed (`tf.random.set_seed`, which run_train.py sets), so its order would depend
    on it, and it fails for a per-epoch tensor seed when the global seed is 0.
    """

    def permute(j, block):
        n = tf.shape(block[0], out_type=tf.int64)[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([key[0] * 1_000_003 + key[1], j])
        )
        return tuple(tf.gather(part, order) for part in block)

    return ds.batch(size).enumerate().map(permute).unbatch()


def record_stream(
    records: Records,
    *,
    seed: int,
    start: int,
    pipeline: int = 0,
    pipelines: int = 1,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    cycle_length: int = CYCLE_LENGTH,
) -> tf.data.Dataset:
    """(position, encoded image, label, file id, record number) of pipeline `pipeline`'s
    endless stream from record `start` on (positions count records of this pipeline's stream
    from 0; the file id and number name the record, see `record_names`)."""
    mine, every, first = records.share(pipeline, pipelines)
    ids = tf.constant(
        range(len(records.files))[pipeline::pipelines]
        if mine is not records
        else range(len(records.files)),
        tf.int64,
    )
    n = records.pipeline_examples(pipeline, pipelines)
    if n < 1:
        raise UserError(
            f"input pipeline {pipeline} of {pipelines} has no examples "
            f"({records.num_examples} in {len(records.files)} files)"
        )
    files = tf.constant(mine.files)
    skip = tf.constant(mine.skip, tf.int64)
    take = tf.constant(mine.take, tf.int64)
    start_epoch, offset = divmod(int(start), n)
    cycle = max(1, min(cycle_length, len(mine.files)))
    parse = _parse(records)

    def epoch_records(epoch):
        key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.size(files)), seed=key)
        ds = _read(
            tf.gather(ids, order),
            tf.gather(files, order),
            tf.gather(skip, order),
            tf.gather(take, order),
            cycle_length=cycle,
        )
        if every > 1:
            ds = ds.shard(every, first)
        ds = _shuffle_blocks(ds, shuffle_buffer, key)
        # Skip the first epoch's consumed records: read, not parsed or decoded.
        return ds.skip(tf.where(epoch == start_epoch, tf.constant(offset, tf.int64), 0))

    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_records)
    ds = ds.enumerate(start=start_epoch * n + offset)
    return ds.map(
        lambda position, read: (position, *parse(read[0]), read[1], read[2]),
        num_parallel_calls=_AUTOTUNE,
        deterministic=True,
    )


def eval_records(records: Records) -> tf.data.Dataset:
    """(encoded image, label, file id, record number) of every record once, in file order."""
    ds = _read(
        tf.range(len(records.files), dtype=tf.int64),
        tf.constant(records.files),
        tf.constant(records.skip, tf.int64),
        tf.constant(records.take, tf.int64),
        cycle_length=1,
    )
    parse = _parse(records)
    return ds.map(
        lambda record, i, number: (*parse(record), i, number),
        num_parallel_calls=_AUTOTUNE,
        deterministic=True,
    )


def train_dataset(
    records: Records,
    batch_size: int,
    *,
    train_view,
    image_size: int,
    failures,
    seed: int,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    options: tf.data.Options | None = None,
) -> tf.data.Dataset:
    """The endless training stream from global step `start_step` on.

    Args:
      records: the split's files.
      batch_size: the global batch without `input_context`, the per-replica batch with it.
      train_view: `(encoded image, seed [2]) -> float32 [S, S, 3]`, the augmented view.
      image_size: S.
      failures: `corrupt.ReadFailures`: an image that does not decode is named (by file and
        record number), or skipped and its slot filled by another image of the batch.
      seed: the run's seed (file orders, shuffle buffers, augmentation).
      start_step: the global step of the first batch.
      input_context: `distribute_datasets_from_function`'s: this pipeline yields its share of
        every step, R = replicas / pipelines consecutive batches of `batch_size`.
      options: tf.data options to set.
    """
    if batch_size < 1 or start_step < 0:
        raise UserError(f"batch_size={batch_size} and start_step={start_step} must be >= 1, >= 0")
    pipeline, pipelines, share = 0, 1, batch_size
    if input_context is not None:
        pipeline = input_context.input_pipeline_id
        pipelines = input_context.num_input_pipelines
        share = batch_size * max(input_context.num_replicas_in_sync // pipelines, 1)
    ds = record_stream(
        records, seed=seed, start=start_step * share, pipeline=pipeline, pipelines=pipelines
    )
    names = record_names(records)

    def with_seed(position, contents, label, file_id, number):
        # Unique per (pipeline, position): pipelines never share an augmentation seed.
        key = tf.stack([tf.constant(seed, tf.int64), position * pipelines + pipeline])
        return contents, label, key, names(file_id, number)

    def decode(contents, labels, keys, where):
        slots = tf.range(tf.size(labels))
        examples = tf.data.Dataset.from_tensor_slices((slots, contents, keys)).map(
            lambda slot, c, key: (slot, train_view(c, key)),
            num_parallel_calls=_AUTOTUNE,
            deterministic=True,
        )
        return decode_batch(examples, where, labels, image_size, failures, fill=True)

    ds = ds.map(with_seed, num_parallel_calls=_AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(decode, num_parallel_calls=_AUTOTUNE, deterministic=True).prefetch(_AUTOTUNE)
    return ds.with_options(options) if options is not None else ds


def eval_dataset(
    records: Records,
    batch_size: int,
    *,
    eval_view,
    image_size: int,
    failures,
    limit: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    options: tf.data.Options | None = None,
) -> tf.data.Dataset:
    """The split's first `limit` (default all) examples once, in file order, with the last
    partial batch; `eval_view` maps an encoded image to float32 [S, S, 3]. An image that does
    not decode is named, or dropped with `failures.skip`.

    With `input_context`, `batch_size` is the per-replica batch and the batches are those of
    `pipeline.eval_indices`: for each global batch of the one-pipeline pass, this pipeline's
    R replicas' slices (short or empty near the end). Every pipeline reads every record (a
    stream cannot seek) but decodes only its share.
    """
    ds = eval_records(records)
    if limit is not None:
        ds = ds.take(limit)
    names = record_names(records)

    def decode(contents, labels, file_ids, numbers):
        slots = tf.range(tf.size(labels))
        examples = tf.data.Dataset.from_tensor_slices((slots, contents)).map(
            lambda slot, c: (slot, eval_view(c)), num_parallel_calls=_AUTOTUNE, deterministic=True
        )
        where = names(file_ids, numbers)
        return decode_batch(examples, where, labels, image_size, failures, fill=False)

    if input_context is None:
        ds = ds.batch(batch_size)
    else:
        pipelines = input_context.num_input_pipelines
        local = max(input_context.num_replicas_in_sync // pipelines, 1)
        lo = input_context.input_pipeline_id * local * batch_size

        def replica_slices(*batch):
            def piece(j):
                start = lo + tf.cast(j, tf.int32) * batch_size
                return tuple(part[start : start + batch_size] for part in batch)

            return tf.data.Dataset.range(local).map(piece)

        ds = ds.batch(batch_size * local * pipelines).flat_map(replica_slices)
    ds = ds.map(decode, num_parallel_calls=_AUTOTUNE, deterministic=True).prefetch(_AUTOTUNE)
    return ds.with_options(options) if options is not None else ds
