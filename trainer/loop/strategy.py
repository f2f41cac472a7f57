"""The tf.distribute strategy a run trains under, by name.

    strategy = make_strategy("auto")               # all visible GPUs, else the CPU
    strategy = make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])  # tests

Everything stateful (model, optimizer, step counter, loss scale, checkpoint) must be created
inside `strategy.scope()`; `trainer.experiment.Experiment.build` does that.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from trainer.config import STRATEGIES
from trainer.errors import UserError
from trainer.run_dir import files as run_dir

NAMES = STRATEGIES


def _gpus() -> list[str]:
    return [d.name for d in tf.config.list_logical_devices("GPU")]


def make_strategy(name: str = "auto", devices: list[str] | None = None) -> tf.distribute.Strategy:
    """Returns the strategy for `name`.

    Args:
        name: `auto` (MirroredStrategy over every visible GPU when there is one, else
            OneDeviceStrategy on the CPU), `mirrored` (all GPUs, or `devices`), `one_device`
            (the first GPU, else the CPU, or `devices[0]`) or `multi_worker`
            (MultiWorkerMirroredStrategy configured by the TF_CONFIG environment variable).
        devices: Explicit device names, e.g. `["/cpu:0", "/cpu:1"]` for two logical CPUs.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        UserError: Unknown name, or `multi_worker` without a usable TF_CONFIG.
    """
    if name not in NAMES:
        raise UserError(f"--strategy={name!r} is unknown; choose one of {', '.join(NAMES)}")
    if name == "multi_worker":
        return _multi_worker()
    gpus = _gpus()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0] if devices else (gpus or ["/cpu:0"])[0])
    if name == "mirrored" or (name == "auto" and (devices or gpus)):
        devices = devices or gpus or ["/cpu:0"]
        cross_device_ops = None  # TF's choice (NCCL / collectives) for GPUs
        if all("cpu" in d.lower() for d in devices):
            # Collective ops number their instances per strategy object, so two
            # MirroredStrategy objects over the same CPUs in one process (tests) reuse keys
            # with different shapes and abort; reducing on one device has no such keys.
            cross_device_ops = tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)
    return tf.distribute.OneDeviceStrategy("/cpu:0")


def _multi_worker() -> tf.distribute.Strategy:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise UserError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable"
            ' (e.g. {"cluster": {"worker": ["host1:port", "host2:port"]},'
            ' "task": {"type": "worker", "index": 0}})'
        )
    try:
        tf_config = json.loads(raw)
        tf_config["cluster"]["worker"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"TF_CONFIG={raw!r} is not a valid cluster spec ({e})") from None
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _cluster(strategy) -> tuple[dict, object]:
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return spec, resolver


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes summaries, metrics and exports (`run_dir.files.is_chief`:
    the rule run_train.py applies to TF_CONFIG before TensorFlow is imported)."""
    spec, resolver = _cluster(strategy)
    if not spec:
        return True
    return run_dir.is_chief(resolver.task_type, resolver.task_id, bool(spec.get("chief")))


def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in its task type (0 outside a cluster)."""
    spec, resolver = _cluster(strategy)
    return int(getattr(resolver, "task_id", 0) or 0) if spec else 0


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Processes of the cluster (1 outside one)."""
    spec, _ = _cluster(strategy)
    return max(1, sum(len(tasks) for tasks in spec.values()))


def distribute_per_worker(strategy, global_batch_size: int, make):
    """`make(batch_size, input_context)`'s dataset, distributed so each worker reads its share.

    Each input pipeline gets the per-replica batch size and its `tf.distribute.InputContext`
    (`distribute_datasets_from_function`). A global batch that does not divide over the
    replicas falls back to one pipeline of global batches, `make(global_batch_size, None)`,
    that every worker reads whole (`experimental_distribute_dataset`).
    """
    if global_batch_size % strategy.num_replicas_in_sync:
        return distribute_dataset(strategy, make(global_batch_size, None))

    def per_worker(context):
        return make(context.get_per_replica_batch_size(global_batch_size), context)

    return distribute_dataset(strategy, per_worker)


def distribute_dataset(strategy, dataset):
    """A dataset distributed over `strategy`'s replicas, global batch order kept exact.

    Args:
        strategy: The run's strategy.
        dataset: A `tf.data.Dataset` of global batches: `experimental_distribute_dataset`
            with DATA sharding, every worker reading the whole stream and keeping its
            replicas' slices of each global batch. Or a function `InputContext -> dataset`
            (e.g. `trainer.data.Data.train_dataset` with input_context) for
            `distribute_datasets_from_function`: each worker builds only its own pipeline,
            which reads only its share of each global batch, as R consecutive per-replica
            batches for its R local replicas (MirroredStrategy hands a worker's consecutive
            elements to its local replicas in turn, replica 0 first).

    Returns:
        A distributed dataset; in both cases the union over replicas at each step is the
        single-device global batch, split over replicas in the same order.
    """
    if callable(dataset) and not isinstance(dataset, tf.data.Dataset):
        dataset_fn = dataset

        def per_worker(context):
            options = tf.data.Options()
            # The function already shards by global batch; tf.data must not shard again.
            policy = tf.data.experimental.AutoShardPolicy.OFF
            options.experimental_distribute.auto_shard_policy = policy
            return dataset_fn(context).with_options(options)

        return strategy.distribute_datasets_from_function(per_worker)
    options = tf.data.Options()
    # DATA: every worker reads the same stream and keeps its replicas' slices of each global
    # batch, so N workers see exactly the batches one worker would.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def pass_iterator(dataset):
    """An iterator over a finite (distributed) dataset, made eagerly, for a compiled pass.

    The compiled passes (evaluation, the ensemble's probabilities, the BatchNorm statistics of
    an averaged model) take this iterator, not the dataset. Given the dataset, the tf.function
    makes its iterator inside the graph, and under MirroredStrategy with 2 replicas an error
    in the input pipeline (an image that does not decode) then hung the pass instead of
    raising, in about 2 runs of 3 (TensorFlow 2.21); over an iterator made here it raised in
    every run (`tests/test_data_corrupt.py`).
    """
    return iter(dataset)
