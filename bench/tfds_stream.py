"""Benchmark 10: a TFDS dataset prepared as TFRecord, read as a stream (`trainer.data.streaming`).

One generated TFDS dataset of 64x64 JPEGs, prepared twice in a temporary directory: as
TFRecord files (no random access: read as a stream when it does not fit memory) and as
ArrayRecord (random access by index). Input pipeline alone, `Data.train_dataset` at 32 px with
augmentation:

* steady images/s: held in memory (--cache=memory), ArrayRecord read by index, TFRecord stream;
* seconds to the first batch when starting at step 0, half-way through an epoch and at the last
  step of an epoch: the stream re-reads the epoch's records up to the step (its resume cost);
* exactness: the stream started at step k equals the tail of the stream from step 0, bit for
  bit; and how many examples of each global batch one worker and two workers have in common
  (the stream's batches depend on the number of input pipelines, the index pipeline's do not).

    python3 bench/run_all.py --only=stream
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from bench.common import Section, Stats, alternate, fmt, spread, table
from trainer import data
from trainer.config import Config

_DISTINCT = 256  # distinct images the generated dataset cycles through
_CLASSES = tuple(f"class_{k}" for k in range(10))


class LrtechBenchImages(tfds.core.GeneratorBasedBuilder):
    """Generated 64x64 JPEGs; the number of examples is set by the `examples` class field."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None
    examples = 2_000

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(64, 64, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=_CLASSES),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        n = self.examples
        return {
            "train": self._generate_examples(n, 0),
            "test": self._generate_examples(max(n // 16, 10), 1),
        }

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (_DISTINCT, 64, 64, 3), dtype=np.uint8)
        for i in range(n):
            image = images[i % _DISTINCT].copy()
            image[0, 0] = (i % 256, i // 256 % 256, i // 65536)  # every image distinct
            yield i, {"image": image, "label": i % len(_CLASSES)}


def _prepare(root: str, examples: int, shards: int) -> dict[str, str]:
    LrtechBenchImages.examples = examples
    dirs = {}
    for file_format in ("tfrecord", "array_record"):
        data_dir = os.path.join(root, file_format)
        builder = LrtechBenchImages(data_dir=data_dir, file_format=file_format)
        config = tfds.download.DownloadConfig(num_shards=shards)
        builder.download_and_prepare(download_config=config)
        dirs[file_format] = data_dir
    return dirs


def _config(data_dir: str, cache: str) -> Config:
    return Config(
        model_dir="/tmp/unused",
        dataset="lrtech_bench_images",
        data_dir=data_dir,
        cache=cache,
        image_size=32,
        seed=0,
    )


def _rate(source, batch: int, batches: int) -> float:
    """Images/s pulling `batches` batches after one warm-up batch."""
    iterator = iter(source.train_dataset(batch))
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def _first_batch(source, batch: int, step: int) -> float:
    start = time.perf_counter()
    next(iter(source.train_dataset(batch, start_step=step)))
    return time.perf_counter() - start


def _read_rate(files: list[str]) -> tuple[float, float]:
    """(records/s, MB/s) reading TFRecord `files` once, nothing parsed: a replay's rate."""
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=16, deterministic=True)
    size = sum(os.path.getsize(f) for f in files)
    start = time.perf_counter()
    count = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
    seconds = time.perf_counter() - start
    return count / seconds, size / 1e6 / seconds


def _large_records(root: str, count: int, size: int = 110_000, shards: int = 8) -> list[str]:
    """TFRecord files of `count` random records of `size` bytes (an ImageNet JPEG's size)."""
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(size) for _ in range(16)]
    files = []
    for shard in range(shards):
        path = os.path.join(root, f"large-{shard:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(shard, count, shards):
                writer.write(blobs[i % len(blobs)])
        files.append(path)
    return files


# ImageNet's training set: 1,281,167 JPEGs; ILSVRC2012_img_train.tar is about 138 GB.
IMAGENET_TRAIN = 1_281_167
IMAGENET_TRAIN_GB = 138


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


def _exactness(stream, plain, batch: int, steps_per_epoch: int) -> dict:
    """Stream from step k vs the tail from 0; examples in common, one vs two pipelines
    (`plain`: the same stream unaugmented, so images identify examples)."""
    full = list(stream.train_dataset(batch).take(steps_per_epoch + 3).as_numpy_iterator())
    starts = (1, steps_per_epoch // 2, steps_per_epoch + 1)
    tails = {
        k: list(stream.train_dataset(batch, start_step=k).take(3).as_numpy_iterator())
        for k in starts
    }
    exact = all(_same(full[k : k + 3], tails[k]) for k in starts)
    # Two input pipelines (workers) of one replica each: global batch = both halves.
    one = list(plain.train_dataset(batch).take(4).as_numpy_iterator())
    halves = [
        list(
            plain.train_dataset(batch // 2, input_context=tf.distribute.InputContext(2, i, 2))
            .take(4)
            .as_numpy_iterator()
        )
        for i in range(2)
    ]
    common = []
    for step in range(4):
        a = {x.tobytes() for x in one[step][0]}
        b = {x.tobytes() for h in halves for x in h[step][0]}
        common.append(len(a & b) / batch)
    return {"exact": exact, "starts": starts, "common": float(np.mean(common))}


def tfds_stream(scale, log) -> Section:
    quick = scale.name == "quick"
    examples, shards, batch = (2_000, 8, 32) if quick else (20_000, 32, 64)
    reps = 1 if quick else 3
    batches = 20 if quick else 60
    root = tempfile.mkdtemp(prefix="lrtech_stream_")
    try:
        log(f"stream: preparing {examples:,} JPEGs as TFRecord and ArrayRecord in {root}")
        started = time.perf_counter()
        dirs = _prepare(root, examples, shards)
        log(f"stream: prepared in {time.perf_counter() - started:.0f} s")
        sources = {
            "memory": data.load(_config(dirs["tfrecord"], "memory")),
            "random access": data.load(_config(dirs["array_record"], "none")),
            "stream": data.load(_config(dirs["tfrecord"], "none")),
        }
        assert sources["stream"]._train.records is not None
        assert sources["random access"]._train.source is not None
        rates = alternate(
            {name: (lambda s=s: _rate(s, batch, batches)) for name, s in sources.items()},
            reps=reps,
            warmup=0,
            log=log,
        )
        spe = examples // batch
        positions = {"step 0": 0, "half an epoch": spe // 2, "last step of an epoch": spe - 1}
        first = {
            (name, where): Stats([_first_batch(sources[name], batch, step) for _ in range(reps)])
            for name in ("random access", "stream")
            for where, step in positions.items()
        }
        small_files = list(sources["stream"]._train.records.files)
        large_files = _large_records(root, 500 if quick else 4_000)
        _read_rate(small_files), _read_rate(large_files)  # warm-up: page cache, first trace
        small = [_read_rate(small_files) for _ in range(reps)]
        large = [_read_rate(large_files) for _ in range(reps)]
        record_rate = Stats([r for r, _ in small]).median
        byte_rate = Stats([b for _, b in large]).median
        log("stream: exactness")
        plain = data.load(dataclasses.replace(_config(dirs["tfrecord"], "none"), augment=False))
        exact = _exactness(sources["stream"], plain, batch, spe)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rate_rows = [
        [name, spread(rates.stats[name], 3), spread(rates.ratio(name), 3)] for name in sources
    ]
    first_rows = [
        [
            where,
            spread(first[("random access", where)], 3),
            spread(first[("stream", where)], 3),
        ]
        for where in positions
    ]
    body = (
        f"**Steady input rate** (`Data.train_dataset`, 32 px, augmented, batch {batch}, "
        f"{batches} batches, {reps} runs, median (min-max))\n\n"
        + table(["--cache / prepared as", "images/s", "ratio to memory"], rate_rows)
        + "\n\n**Seconds to the first batch, by start step** (what a resume costs)\n\n"
        + table(["start step", "ArrayRecord, by index", "TFRecord stream"], first_rows)
    )
    zero, last = (first[("stream", w)].median for w in ("step 0", "last step of an epoch"))
    replay = IMAGENET_TRAIN / record_rate + IMAGENET_TRAIN_GB * 1000 / byte_rate
    meaning = (
        f"The stream started at steps {', '.join(str(s) for s in exact['starts'])} equals the "
        f"tail of the stream from step 0 bit for bit: **{'yes' if exact['exact'] else 'NO'}**. "
        "Starting at step k re-reads the epoch's records before step k (every start also "
        f"fills the shuffle buffer): here {fmt(zero)} s at step 0 and {fmt(last)} s at the "
        f"last step of an epoch of {examples:,} records. Reading TFRecords, nothing parsed, "
        f"runs at {record_rate:,.0f} records/s for these small records and {byte_rate:,.0f} "
        "MB/s for 110 KB ones (page cache warm); at those rates, resuming at the end of an "
        f"ImageNet epoch ({IMAGENET_TRAIN:,} JPEGs, about {IMAGENET_TRAIN_GB} GB) re-reads for "
        f"at most about {replay:,.0f} s on one worker (divided among W workers; from disk, "
        "at the disk's rate). "
        f"With two input pipelines (workers) the global batches share "
        f"{exact['common']:.0%} of their examples with one pipeline's: the stream's order "
        "depends on the number of workers; the index pipelines' (memory, ArrayRecord, folders) "
        "does not. Steady, the stream feeds "
        f"{fmt(rates.ratio('stream').median)}x the in-memory rate and ArrayRecord by index "
        f"{fmt(rates.ratio('random access').median)}x (both decode every JPEG; memory holds "
        "these small images decoded)."
    )
    setup = (
        f"A generated TFDS dataset of {examples:,} train JPEGs (64x64, 10 classes), prepared in "
        f"a temporary directory as {shards} TFRecord files and as ArrayRecord. `--cache=none` "
        "reads ArrayRecord by index (exact, any number of workers) and TFRecord as a stream "
        "(per-pipeline files, a shuffle buffer of "
        "10,000 records, exact resume by re-reading the epoch up to the step; README, "
        "docs/DATA.md). Input pipeline alone, no model; page cache warm."
    )
    return Section(
        title="10. TFDS prepared as TFRecord: the streaming path",
        command=scale.cmd("stream"),
        setup=setup,
        body=body,
        meaning=meaning,
        goals=[("stream resumed at step k equals the tail of the stream", exact["exact"])],
    )
