"""Evaluation data: sharded per input pipeline (equal to one device), and TFDS data-source
examples that fail to read or decode (named, or skipped in place with skip_corrupt).

Tiny generated folders and a tiny TFDS dataset really prepared as ArrayRecord; the two
logical CPU devices come from conftest.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import helpers
from tests.test_data_stream import LrtechTinyImages
from trainer import data
from trainer.config import Config
from trainer.data import pipeline
from trainer.errors import UserError
from trainer.loop.strategy import make_strategy

CLASSES = ("c0", "c1", "c2", "c3", "c4", "c5")  # > 5 classes: top-5 is reported
EVAL_PER_CLASS = (2, 2, 2, 2, 2, 1)  # 11 eval images: no global batch divides them


def _write_folder(root):
    """1 train and 1-2 eval files per class (PNG and JPEG), each image distinct."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", (1,) * 6), ("test", EVAL_PER_CLASS)):
        for label, (name, count) in enumerate(zip(CLASSES, counts)):
            directory = root / split / name
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
                pixels[..., label % 3] //= 4
                suffix = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(directory / f"{i:03d}.{suffix}", quality=95)
    return root


def _config(root, model_dir="/tmp/unused", **changes):
    base = dict(model_dir=str(model_dir), dataset=f"folder:{root}", image_size=8, seed=3)
    return Config(**{**base, **changes})


def _vectors(ds):
    return [v.numpy().tolist() for v in ds]


# Shares ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,batch", [(11, 2), (13, 3), (3, 2), (8, 2)])
def test_eval_indices_cover_every_example_once_in_replica_order(n, batch):
    # 2 pipelines (workers) x 2 local replicas: global batch 4 * batch.
    contexts = [tf.distribute.InputContext(2, i, 4) for i in range(2)]
    shares = [_vectors(pipeline.eval_indices(n, batch, c)) for c in contexts]
    global_batch = 4 * batch
    steps = -(-n // global_batch)
    assert [len(s) for s in shares] == [2 * steps, 2 * steps]  # the replicas step together
    for g in range(steps):
        # Replica r = 2 * pipeline + local replica takes slice r of global batch g.
        union = shares[0][2 * g : 2 * g + 2] + shares[1][2 * g : 2 * g + 2]
        assert sum(union, []) == list(range(g * global_batch, min((g + 1) * global_batch, n)))
        assert all(len(v) <= batch for v in union)
    assert _vectors(pipeline.eval_indices(n, batch)) == [
        list(range(i, min(i + batch, n))) for i in range(0, n, batch)
    ]


def test_each_eval_pipeline_reads_only_its_share(tmp_path):
    root = _write_folder(tmp_path)
    source = data.load(_config(root, cache="none"))
    split = source._eval
    whole = list(source.eval_dataset(4).as_numpy_iterator())
    images = np.concatenate([x for x, _ in whole])
    labels = np.concatenate([y for _, y in whole])
    # 2 pipelines of one replica each, 2 examples per replica: global batches of 4.
    contexts = [tf.distribute.InputContext(2, i, 2) for i in range(2)]

    def shard(context):
        ds = pipeline.eval_dataset(split, 2, image_size=8, input_context=context)
        return list(ds.as_numpy_iterator())

    mine = sum(_vectors(pipeline.eval_indices(11, 2, contexts[0])), [])
    assert mine == [0, 1, 4, 5, 8, 9]
    for context in contexts:
        got = shard(context)
        assert [len(y) for _, y in got] == (
            [2, 2, 2] if context.input_pipeline_id == 0 else [2, 2, 1]
        )
    # Delete every eval file outside pipeline 0's share: it still evaluates its part exactly,
    # pipeline 1 fails naming one of them.
    files = [str(root / "test" / f.decode()) for f in split.files]
    for i, path in enumerate(files):
        if i not in mine:
            tf.io.gfile.remove(path)
    got = shard(contexts[0])
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), images[mine])
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), labels[mine])
    with pytest.raises(tf.errors.InvalidArgumentError, match="cannot read or decode image"):
        shard(contexts[1])


# Evaluation under MirroredStrategy equals one device ---------------------------------------------


def _evaluate(config, strategy):
    experiment = helpers.build(config, strategy=strategy)
    return experiment.evaluator.evaluate(), experiment.eval_data()


@pytest.mark.parametrize(
    "global_batch,cache,corrupt",
    [
        (8, "none", False),  # global batches 8, 3: replica 0 takes 3, replica 1 nothing
        (6, "memory", False),  # 6, 5: the last one split 3 + 2
        (6, "none", True),  # an unreadable eval file skipped: counted by neither
    ],
)
def test_sharded_evaluation_equals_one_device(tmp_path, global_batch, cache, corrupt):
    root = _write_folder(tmp_path / "data")
    if corrupt:
        (root / "test" / "c2" / "000.jpg").write_bytes(b"not an image")
    config = _config(
        root, tmp_path / "run", cache=cache, skip_corrupt=corrupt, global_batch_size=global_batch
    )
    one, _ = _evaluate(config, make_strategy("one_device"))
    two, dataset = _evaluate(config, helpers.two_replicas())
    assert type(dataset).__name__ == "DistributedDatasetsFromFunction"  # the sharded path
    assert one["examples"] == 11 - corrupt
    assert set(one) == {"loss", "accuracy", "examples", "top5"}
    assert 0 < one["top5"] < 1  # 6 classes, an untrained model: both hits and misses
    # Counts are exact; the loss is a float sum in another order on 2 replicas (AMD EPYC:
    # 1.8370948 vs 1.8370947), equal to ~1e-6 relative.
    assert {k: two[k] for k in ("examples", "accuracy", "top5")} == {
        k: one[k] for k in ("examples", "accuracy", "top5")
    }
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)


def test_evaluation_falls_back_when_the_batch_does_not_divide(tmp_path):
    root = _write_folder(tmp_path / "data")
    config = _config(root, tmp_path / "run", cache="none", global_batch_size=5)
    one, _ = _evaluate(config, make_strategy("one_device"))
    two, dataset = _evaluate(config, helpers.two_replicas())
    assert type(dataset).__name__ != "DistributedDatasetsFromFunction"
    assert two["examples"] == one["examples"] == 11
    assert two == pytest.approx(one, rel=1e-6)


# TFDS data-source examples that fail to read or decode ------------------------------------------

GARBAGE = b"\x89PNG not really"


class LrtechEvalCorrupt(LrtechTinyImages):
    """13 train and 5 test random 8x10 PNG images; train example 6 holds undecodable bytes."""

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            image = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
            if seed == 0 and i == 6:
                image = GARBAGE  # stored as is: the record reads, the image does not decode
            yield i, {"image": image, "label": (i * 7 + seed) % 3}


class Failing:
    """A data source that raises for one index, as a damaged record or an I/O error would."""

    def __init__(self, source, bad):
        self.source, self.bad = source, bad

    def __getitems__(self, indices):
        if self.bad in indices:
            raise OSError(f"record {self.bad}: checksum mismatch")
        return self.source.__getitems__(indices)


@pytest.fixture(scope="module")
def corrupt_tfds(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("corrupt_tfds"))
    LrtechEvalCorrupt(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def _tfds_load(data_dir, skip):
    config = _config(
        "", dataset="lrtech_eval_corrupt", data_dir=data_dir, cache="none", skip_corrupt=skip
    )
    source = data.load(config)
    train = source._train
    garbage = [i for i in range(13) if train.source[i]["image"] == GARBAGE]
    assert len(garbage) == 1  # TFDS shuffles when preparing: find the undecodable one
    # Another training example fails to read at all.
    failing = (garbage[0] + 5) % 13
    source._train = dataclasses.replace(train, source=Failing(train.source, failing))
    return source, garbage[0], failing


def test_tfds_read_and_decode_failures_are_named_or_skipped_in_place(corrupt_tfds):
    strict, garbage, failing = _tfds_load(corrupt_tfds, skip=False)
    name = "lrtech_eval_corrupt train #{}".format
    # The first batch (4 of 13, epochs of 3 steps) that holds either bad example.
    indices = [int(i) for _, _, i in strict.train_indices(4).take(36).as_numpy_iterator()]
    step = min(indices.index(garbage), indices.index(failing)) // 4
    bad = sorted({garbage, failing} & set(indices[4 * step : 4 * step + 4]))
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(strict.train_dataset(4, augment=False).take(step + 1).as_numpy_iterator())
    message = str(error.value)
    assert "cannot read or decode image" in message and "--skip_corrupt" in message
    assert f"[{', '.join(name(i) for i in bad)}]" in message  # tf.debugging.Assert's brackets

    lenient, _, _ = _tfds_load(corrupt_tfds, skip=True)
    batches = list(lenient.train_dataset(4, augment=False).take(9).as_numpy_iterator())
    assert lenient.skipped_on_read == sorted([name(garbage), name(failing)])
    # The reference: every other example as evaluation reads it (the bad ones dropped).
    failures = pipeline.ReadFailures("eval", skip=True)
    reference = pipeline.eval_dataset(lenient._train, 13, image_size=8, failures=failures)
    ((images, labels),) = list(reference.as_numpy_iterator())
    assert failures.paths == lenient.skipped_on_read
    kept = [i for i in range(13) if i not in (garbage, failing)]
    assert len(labels) == 11
    for step, (x, y) in enumerate(batches):
        assert x.shape == (4, 8, 8, 3)  # batches keep their size
        for slot in range(4):
            index = indices[4 * step + slot]
            if index in (garbage, failing):  # a copy of another example of the same batch
                assert any(np.array_equal(x[slot], x[j]) for j in range(4) if j != slot)
            else:  # every other example keeps its place
                np.testing.assert_array_equal(x[slot], images[kept.index(index)])
                assert y[slot] == labels[kept.index(index)] == lenient._train.labels[index]


class Recording:
    """A data source that records the indices it is asked for."""

    def __init__(self, source):
        self.source, self.asked = source, []

    def __getitems__(self, indices):
        self.asked += indices
        return self.source.__getitems__(indices)


def test_each_tfds_eval_pipeline_fetches_only_its_share(corrupt_tfds):
    config = _config("", dataset="lrtech_eval_corrupt", data_dir=corrupt_tfds, cache="none")
    source = data.load(config)
    whole = np.concatenate([x for x, _ in source.eval_dataset(2).as_numpy_iterator()])
    for i, share in enumerate(([0, 2, 4], [1, 3])):
        recording = Recording(source._eval.source)
        split = dataclasses.replace(source._eval, source=recording)
        context = tf.distribute.InputContext(2, i, 2)  # 2 pipelines, 1 replica each
        ds = pipeline.eval_dataset(split, 1, image_size=8, input_context=context)
        got = [x for x, _ in ds.as_numpy_iterator()]
        assert sorted(recording.asked) == share
        # 3 global batches of 2: pipeline 1's last batch is empty.
        assert [len(x) for x in got] == ([1, 1, 1] if i == 0 else [1, 1, 0])
        np.testing.assert_array_equal(np.concatenate(got), whole[share])


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_tfds_split_decoded_into_memory_names_or_skips_an_undecodable_image(tmp_path, file_format):
    LrtechEvalCorrupt(data_dir=str(tmp_path), file_format=file_format).download_and_prepare()
    config = _config(
        "", dataset="lrtech_eval_corrupt", data_dir=str(tmp_path), cache="memory", augment=False
    )
    with pytest.raises(UserError) as error:
        data.load(config)
    message = str(error.value)
    assert message.startswith(
        "--dataset=lrtech_eval_corrupt: cannot decode image lrtech_eval_corrupt train #"
    ) and message.endswith("(pass --skip_corrupt to leave such images out)")
    source = data.load(dataclasses.replace(config, skip_corrupt=True))
    assert source._train.images.shape == (12, 8, 10, 3) and source._train.images.dtype == np.uint8
    assert source.info.num_skipped == 1 and source.info.num_train == 12
    # The 12 images and labels are those read on demand (by index, or as a stream), in order.
    on_demand = data.load(dataclasses.replace(config, cache="none", skip_corrupt=True))
    held, read = source.as_numpy("train"), on_demand.as_numpy("train")
    np.testing.assert_array_equal(held[0], read[0])
    np.testing.assert_array_equal(held[1], read[1])
