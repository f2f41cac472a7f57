"""The compiled inner loops: `num_steps` training steps per call, and one pass of evaluation.

The controller (`trainer.loop.controller`) decides how many steps to run before the next action
is due (log, eval, checkpoint, restart, unfreeze) and the trainer (`trainer.loop.runner.Trainer`)
calls `TrainLoop.run` once per such stretch, so Python overhead is paid once per loop, not
once per step. Every step advances the optimizer's `iterations`, the run's one global step,
also when float16 loss scaling skips the update.

One training step, on every replica:

1. forward and backward on the replica's share of the global batch; the loss is the mean over
   the *global* batch (`tf.nn.compute_average_loss`), so summing gradients over replicas gives
   the gradient of the global-batch mean;
2. one all-reduce (SUM) of the gradients of the trainable (unfrozen) variables, with the loss
   and correct count packed in;
3. unscale (float16 loss scaling) and decide "finite" on the aggregated gradient, then clip by
   global norm (also on the aggregated gradient: `global_clipnorm` would clip each replica's
   share);
4. the segmented optimizer, built with `aggregate_gradients=False`.

After the last step of each call, one more all-reduce (MEAN) makes every replica's copy of the
BatchNorm moving statistics the mean of the copies (see `replica_statistics`). Keras 3 creates
them as mirrored variables without aggregation, so a training-mode call on a replica writes
that replica's batch statistics into its own copy only: the copies drift apart, checkpoints
and exports keep replica 0's and evaluation on N replicas uses each replica's own for its
share of the examples (tf.keras aggregated these updates with MEAN). The moving average is
linear (m <- momentum * m + (1 - momentum) * batch), so from equal copies the mean of the
copies after `num_steps` steps is exactly what MEAN aggregation at every step gives (up to
float32 round-off): one all-reduce of a few kilobytes per loop, not one per layer per step.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from trainer.loop.strategy import pass_iterator
from trainer.lr import segments
from trainer.reporting import eval_metrics

SUM = tf.distribute.ReduceOp.SUM
MEAN = tf.distribute.ReduceOp.MEAN


def replica_statistics(model) -> list:
    """The variables whose per-replica copies a training-mode call writes independently.

    Float variables the model's layers created non-trainable (BatchNorm's `moving_mean` and
    `moving_variance`), mirrored over replicas without aggregation. Not: variables created
    trainable (frozen ones too; the optimizer writes them with the all-reduced gradient),
    integer state (seed generators: each replica may keep its own random stream), variables
    that TensorFlow already aggregates (MEAN, SUM, ONLY_FIRST_REPLICA) or syncs on read, and
    variables that are not distributed.

    Averaging once per loop equals MEAN aggregation at every step only for updates that are
    linear in the variable (moving averages) and only while no replica reads its copy during
    the loop: true for BatchNorm without renorm (training mode normalizes with the batch's
    statistics; a frozen layer reads them but does not write). Renorm reads the moving
    statistics while training, so its replicas see slightly different copies within a loop.

    Args:
        model: A built Keras model, created under the strategy's scope.

    Returns:
        The Keras variables, in `model.variables` order (the same on every worker).
    """
    created_trainable = segments.assign(model, None)
    out = []
    for v in model.variables:
        if v.path in created_trainable or not keras.backend.is_float_dtype(v.dtype):
            continue
        tf_variable = v.value if isinstance(v, keras.Variable) else v
        if (
            isinstance(tf_variable, tf.distribute.DistributedValues)
            and tf_variable.synchronization != tf.VariableSynchronization.ON_READ
            and tf_variable.aggregation == tf.VariableAggregation.NONE
        ):
            out.append(v)
    return out


class TrainLoop:
    """Builds and caches one `tf.function` per set of trainable variables.

    Args:
        strategy: The strategy the model and optimizer were created under.
        model: The Keras model (outputs logits).
        optimizer: A built optimizer that does not all-reduce (`aggregate_gradients=False`).
        global_batch_size: Examples per step summed over replicas.
        clipnorm: Optional max global norm of the aggregated gradient.
        loss_scale: Optional `trainer.loop.precision.DynamicLossScale`.
        jit_compile: Compile each replica's forward/backward pass with XLA.
        statistics: Variables to average over replicas after each call (default:
            `replica_statistics(model)`); ignored on one replica.
    """

    def __init__(
        self,
        strategy,
        model,
        optimizer,
        global_batch_size,
        *,
        clipnorm=None,
        loss_scale=None,
        jit_compile=False,
        statistics=None,
    ):
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.global_batch_size = int(global_batch_size)
        self.clipnorm = clipnorm
        self.loss_scale = loss_scale
        self.jit_compile = jit_compile
        if strategy.num_replicas_in_sync == 1:
            statistics = []
        elif statistics is None:
            statistics = replica_statistics(model)
        self.statistics = list(statistics)
        self.traces = 0  # how many times a loop function was traced (tests check retracing)
        self._loops = {}

    def run(self, iterator, num_steps: int, variables, key=None) -> dict[str, np.ndarray]:
        """Runs `num_steps` steps that train `variables`.

        Args:
            iterator: An iterator over `strategy.experimental_distribute_dataset(...)`.
            num_steps: Steps to run (Python int; passed as a tensor so it never retraces).
            variables: The variables to differentiate and update (the unfrozen ones).
            key: Hashable name of the trainable set (one compiled function per key).

        Returns:
            Per-step numpy arrays: `loss` (global-batch mean), `correct` (count over the
            global batch) and `applied` (False where float16 loss scaling skipped the step).
        """
        key = key if key is not None else tuple(v.path for v in variables)
        if key not in self._loops:
            self._loops[key] = self._make_loop(list(variables))
        loss, correct, applied = self._loops[key](iterator, tf.constant(num_steps, tf.int32))
        return {"loss": loss.numpy(), "correct": correct.numpy(), "applied": applied.numpy()}

    def _make_grad_fn(self, variables):
        model, loss_scale = self.model, self.loss_scale

        def grads_fn(images, labels):
            with tf.GradientTape() as tape:
                logits = tf.cast(model(images, training=True), tf.float32)
                per_example = keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True
                )
                loss = tf.nn.compute_average_loss(
                    per_example, global_batch_size=self.global_batch_size
                )
                if model.losses:
                    regularization = tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
                    loss += tf.nn.scale_regularization_loss(regularization)
                scaled = loss_scale.scale_loss(loss) if loss_scale is not None else loss
            grads = tape.gradient(
                scaled, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
            )
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
            correct = tf.reduce_sum(tf.cast(predicted == tf.cast(labels, tf.int32), tf.float32))
            return [tf.cast(g, v.dtype) for g, v in zip(grads, variables)], loss, correct

        return tf.function(grads_fn, jit_compile=True) if self.jit_compile else grads_fn

    def _make_replica_step(self, variables):
        grads_fn = self._make_grad_fn(variables)
        n = len(variables)

        def replica_step(images, labels):
            grads, loss, correct = grads_fn(images, labels)
            context = tf.distribute.get_replica_context()
            reduced = context.all_reduce(SUM, [*grads, loss, correct])
            grads, loss, correct = reduced[:n], reduced[n], reduced[n + 1]
            if self.loss_scale is not None:
                grads, finite = self.loss_scale.unscale(grads)
            else:
                finite = tf.constant(True)
            if self.clipnorm:
                grads, _ = tf.clip_by_global_norm(grads, self.clipnorm)
            if self.loss_scale is None:
                # The update, `iterations` included, waits for the gradients: an input error
                # (an undecodable image) then leaves the step count equal to the updates made.
                with tf.control_dependencies(grads):
                    self.optimizer.apply(grads, variables)
            return grads, loss, correct, finite

        return replica_step

    def _make_loop(self, variables):
        strategy, optimizer = self.strategy, self.optimizer
        replica_step = self._make_replica_step(variables)

        def first(value):
            # Identical on every replica after the all-reduce.
            return strategy.experimental_local_results(value)[0]

        def one_step(batch):
            grads, loss, correct, finite = strategy.run(replica_step, args=batch)
            finite = first(finite)
            if self.loss_scale is not None:
                # The cond runs in cross-replica context: a branch that calls merge_call (the
                # optimizer does) is not allowed inside a replica-context cond.
                def apply():
                    strategy.run(lambda g: optimizer.apply(g, variables), args=(grads,))
                    return tf.constant(True)

                def skip():
                    # The step consumed a batch: the global step (the optimizer's iterations,
                    # which the schedule reads) still advances, so the learning rate follows
                    # the data, as with PyTorch's GradScaler + scheduler.
                    optimizer.iterations.assign_add(1)
                    return tf.constant(False)

                tf.cond(finite, apply, skip)
                self.loss_scale.update(finite)
            return first(loss), first(correct), finite

        def average_statistics():
            # Replica context: reads and writes the replica's own copy. A collective, so under
            # MultiWorkerMirroredStrategy the mean is over the replicas of every worker.
            # tf.identity places the read on this replica's device: converting a Keras variable
            # gives a tensor without one, which MultiWorkerMirroredStrategy's merge_call
            # all-reduce rejects ("destinations can not be empty").
            context = tf.distribute.get_replica_context()
            means = context.all_reduce(MEAN, [tf.identity(v) for v in self.statistics])
            for v, mean in zip(self.statistics, means):
                v.assign(mean)

        def loop(iterator, num_steps):
            self.traces += 1
            losses = tf.TensorArray(tf.float32, size=num_steps)
            corrects = tf.TensorArray(tf.float32, size=num_steps)
            applied = tf.TensorArray(tf.bool, size=num_steps)
            for i in tf.range(num_steps):
                loss, correct, finite = one_step(next(iterator))
                losses = losses.write(i, loss)
                corrects = corrects.write(i, correct)
                applied = applied.write(i, finite)
            if self.statistics:
                strategy.run(average_statistics)
            return losses.stack(), corrects.stack(), applied.stack()

        return tf.function(loop)


class EvalLoop:
    """One compiled pass over a finite distributed dataset: loss, accuracy and top-5.

    Sums (not means) are reduced over replicas and batches and divided by the true example
    count at the end, so a last partial batch (split unevenly, or not at all, over replicas)
    weighs exactly as many examples as it holds. A sharded eval pipeline
    (`trainer.data.pipeline.eval_dataset` with input_context) gives a replica a short or
    empty batch near the end; its count is its batch's size, so no example is counted twice
    or dropped, and examples, accuracy and top-5 equal one device's exactly.
    """

    def __init__(self, strategy, model, num_classes: int):
        self.strategy = strategy
        self.model = model
        self.top_k = eval_metrics.top_k_of(num_classes)
        self._fn = tf.function(self._pass)

    def _replica(self, images, labels):
        logits = self.model(images, training=False)
        loss, predicted, top = eval_metrics.per_example(logits, labels, self.top_k)
        return eval_metrics.batch_sums(loss, predicted, top, labels)

    def _pass(self, iterator):
        totals = tf.zeros([4], tf.float64)
        for batch in iterator:
            sums = self.strategy.run(self._replica, args=batch)
            totals += self.strategy.reduce(SUM, sums, axis=None)
        return totals

    def run(self, dataset) -> dict[str, float]:
        """Evaluates on a distributed dataset; returns `loss`, `accuracy` (and `top5`)."""
        totals = self._fn(pass_iterator(dataset))
        loss, correct, top, count = (float(x) for x in totals.numpy())
        return eval_metrics.record(loss, correct, top, count, self.top_k)
