"""What a classifier gets wrong: confusion matrix, per-class figures, top losses (fastai's
`ClassificationInterpretation`, for lrtech).

    analysis = interpret.analyze(model, source.eval_dataset(128), num_classes)
    record = interpret.write(analysis, source.info.class_names, model_dir, step=step)

`analyze` makes one pass over a finite dataset of (images, labels) batches and computes the
eval metrics of `trainer.reporting.eval_metrics` (as `trainer.loop.compiled.EvalLoop`),
plus the confusion matrix and the k examples with the highest loss. It streams: only
the k worst images are ever kept. `write` draws confusion_matrix.png and top_losses.png into
model_dir, adds both as TensorBoard images under tensorboard/eval, and returns the per-class
figures and the matrix for a JSON record. Without matplotlib it skips the pictures with one
warning; the numbers never need it.

Class names are per index; a class beyond the end of the list is named by its index.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

from trainer import layout
from trainer.reporting import eval_metrics
from trainer.reporting.plots import (  # noqa: F401  (the pictures' public names stay here too)
    INSTALL_HINT,
    MissingMatplotlib,
    class_name,
    plot_confusion_matrix,
    plot_top_losses,
)
from trainer.run_dir import faults

CONFUSION_FILE = layout.CONFUSION_PLOT
TOP_LOSSES_FILE = layout.TOP_LOSSES_PLOT


@dataclasses.dataclass(frozen=True)
class TopLosses:
    """The examples with the highest loss, worst first (ties: earlier example first).

    Attributes:
        images: The images as the dataset gave them (float32 pixels in [0, 255]), [k, H, W, C].
        actual: int64 [k] labels.
        predicted: int64 [k] argmax of the logits.
        probability: float64 [k] softmax probability of the predicted class.
        loss: float64 [k] per-example cross-entropy, descending.
        index: int64 [k] position of each example in the dataset.
    """

    images: np.ndarray
    actual: np.ndarray
    predicted: np.ndarray
    probability: np.ndarray
    loss: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.loss)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The result of `analyze`.

    Attributes:
        confusion: int64 [K, K]; rows are the actual class, columns the predicted one.
        loss: Mean per-example sparse cross-entropy from logits.
        accuracy: Fraction of examples whose argmax is the label.
        top5: Fraction with the label among the 5 highest logits; None when K <= 5.
        examples: Examples seen.
        per_class: `per_class(confusion, class_names)`, one dict per class.
        top_losses: The k worst examples.
    """

    confusion: np.ndarray
    loss: float
    accuracy: float
    top5: float | None
    examples: int
    per_class: list[dict]
    top_losses: TopLosses

    @property
    def metrics(self) -> dict:
        """loss, accuracy, examples (and top5), as `EvalLoop.run` reports them."""
        out = {"loss": self.loss, "accuracy": self.accuracy, "examples": self.examples}
        if self.top5 is not None:
            out["top5"] = self.top5
        return out


def per_class(confusion: np.ndarray, class_names=()) -> list[dict]:
    """Precision, recall and support of each class of a confusion matrix (rows = actual).

    By convention (scikit-learn's `zero_division=0`), the precision of a class that is never
    predicted is 0.0, and so is the recall of a class with no examples (support 0).

    Returns:
        One {"class": name or index, "precision", "recall", "support"} per class.
    """
    confusion = np.asarray(confusion, np.int64)
    true_positives = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    out = []
    for c in range(confusion.shape[0]):
        tp = int(true_positives[c])
        out.append(
            {
                "class": class_name(class_names, c),
                "precision": tp / int(predicted[c]) if predicted[c] else 0.0,
                "recall": tp / int(support[c]) if support[c] else 0.0,
                "support": int(support[c]),
            }
        )
    return out


# Analysis ------------------------------------------------------------------------------------


class _WorstK:
    """Keeps the k examples with the highest loss seen so far; never more than k images."""

    def __init__(self, k: int):
        self.k = k
        self.kept = None  # dict of arrays, worst first

    def update(self, batch: dict) -> None:
        if self.k == 0:
            return
        # The batch's own k worst first, so only k of its images are ever copied.
        batch = _take(batch, _worst_first(batch)[: self.k])
        merged = batch if self.kept is None else _concat(self.kept, batch)
        self.kept = _take(merged, _worst_first(merged)[: self.k])

    def result(self, image_shape, image_dtype) -> TopLosses:
        if self.kept is None:
            empty = np.zeros([0], np.int64)
            return TopLosses(
                np.zeros((0, *image_shape), image_dtype),
                empty,
                empty,
                np.zeros([0]),
                np.zeros([0]),
                empty,
            )
        return TopLosses(**self.kept)


def _worst_first(batch: dict) -> np.ndarray:
    # Highest loss first; equal losses in dataset order.
    return np.lexsort((batch["index"], -batch["loss"]))


def _take(batch: dict, order: np.ndarray) -> dict:
    return {k: np.array(v[order]) for k, v in batch.items()}


def _concat(a: dict, b: dict) -> dict:
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def _forward_fn(model, top_k: int):
    def forward(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        per_example, predicted, top = eval_metrics.per_example(logits, labels, top_k)
        probability = tf.reduce_max(tf.nn.softmax(logits, axis=-1), axis=-1)
        return per_example, predicted, probability, top, tf.shape(logits)[-1]

    # A last partial batch has another shape: one more trace, then no more.
    return tf.function(forward, reduce_retracing=True)


def analyze(model, dataset, num_classes: int, *, top_losses: int = 9, class_names=()):
    """One pass over `dataset`: eval metrics, confusion matrix, per-class figures, top losses.

    Args:
        model: A Keras model (or any callable) mapping images to logits [b, num_classes].
        dataset: A finite iterable of (images, labels) batches, e.g. `Data.eval_dataset(b)`:
            float32 images [b, H, W, 3] in [0, 255], integer labels [b].
        num_classes: K, the width of the logits.
        top_losses: How many of the highest-loss examples to keep (>= 0).
        class_names: Optional names for `Analysis.per_class` (see `class_name`).

    Returns:
        An `Analysis`.

    Raises:
        ValueError: num_classes < 1 or top_losses < 0, logits of another width, or a label
            outside 0..num_classes - 1.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"Argument `num_classes` must be an integer >= 1. Received: num_classes={num_classes!r}"
        )
    if isinstance(top_losses, bool) or not isinstance(top_losses, int) or top_losses < 0:
        raise ValueError(
            f"Argument `top_losses` must be an integer >= 0. Received: top_losses={top_losses!r}"
        )
    top_k = eval_metrics.top_k_of(num_classes)
    forward = _forward_fn(model, top_k)
    confusion = np.zeros([num_classes, num_classes], np.int64)
    sums = np.zeros([3], np.float64)  # loss, correct, in top-k
    worst = _WorstK(top_losses)
    count = 0
    image_shape, image_dtype = (0, 0, 3), np.float32
    for images, labels in dataset:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][0]
            raise ValueError(f"label {bad} is outside 0..{num_classes - 1} (num_classes)")
        loss, predicted, probability, top, width = (
            np.asarray(t) for t in forward(images, labels.astype(np.int32))
        )
        if int(width) != num_classes:
            raise ValueError(f"the model gives {int(width)} logits; num_classes={num_classes}")
        predicted = predicted.astype(np.int64)
        confusion += np.bincount(
            labels * num_classes + predicted, minlength=num_classes * num_classes
        ).reshape(num_classes, num_classes)
        sums += [loss.astype(np.float64).sum(), (predicted == labels).sum(), top.sum()]
        images = np.asarray(images)
        image_shape, image_dtype = images.shape[1:], images.dtype
        worst.update(
            {
                "images": images,
                "actual": labels,
                "predicted": predicted,
                "probability": probability.astype(np.float64),
                "loss": loss.astype(np.float64),
                "index": np.arange(count, count + len(labels), dtype=np.int64),
            }
        )
        count += len(labels)
    metrics = eval_metrics.record(*sums, count, top_k)
    return Analysis(
        confusion=confusion,
        loss=metrics["loss"],
        accuracy=metrics["accuracy"],
        top5=metrics.get("top5"),
        examples=count,
        per_class=per_class(confusion, class_names),
        top_losses=worst.result(image_shape, image_dtype),
    )


# Records -------------------------------------------------------------------------------------


def write_images(logdir: str, step: int, images: dict[str, bytes]) -> None:
    """Writes PNGs as TensorBoard image summaries (tag -> PNG bytes) at `step`.

    With `tf.summary.image` (the tensorboard package), which takes pixels: each PNG is decoded
    and written as one image of its own size.
    """
    writer = tf.summary.create_file_writer(logdir)
    try:
        with writer.as_default(step=step):
            for tag, png in images.items():
                tf.summary.image(tag, tf.io.decode_png(png)[tf.newaxis])
        writer.flush()
    finally:
        writer.close()


def write(
    analysis: Analysis,
    class_names,
    model_dir: str,
    *,
    step=0,
    tensorboard=True,
    confusion_path: str | None = None,
    top_losses_path: str | None = None,
) -> dict:
    """Writes the pictures into `model_dir` and TensorBoard; returns the JSON record.

    Writes model_dir/confusion_matrix.png and model_dir/top_losses.png (or `confusion_path`
    and `top_losses_path`, e.g. `trainer.evaluate`'s own names, which never replace the run's
    pictures) and, with `tensorboard`, the same two pictures as images "confusion_matrix"
    and "top_losses" at `step` in model_dir/tensorboard/eval. Without matplotlib the
    pictures are skipped with one warning.

    Returns:
        {"per_class": [...], "confusion_matrix": [[...], ...]} (rows = actual class).
    """
    confusion_path = confusion_path or os.path.join(model_dir, CONFUSION_FILE)
    top_losses_path = top_losses_path or os.path.join(model_dir, TOP_LOSSES_FILE)
    tf.io.gfile.makedirs(model_dir)
    pictures = {}
    try:
        pictures["confusion_matrix"] = plot_confusion_matrix(
            analysis.confusion, class_names, confusion_path
        )
        faults.point("interpret")  # crash tests: a kill between the two pictures
        pictures["top_losses"] = plot_top_losses(analysis, class_names, top_losses_path)
    except MissingMatplotlib:
        logging.warning(
            "matplotlib is not installed: no %s / %s (%s)",
            os.path.basename(confusion_path),
            os.path.basename(top_losses_path),
            INSTALL_HINT,
        )
        pictures = {}
    if tensorboard and pictures:
        write_images(os.path.join(model_dir, layout.TENSORBOARD_DIR, "eval"), int(step), pictures)
    return {
        "per_class": per_class(analysis.confusion, class_names),
        "confusion_matrix": analysis.confusion.tolist(),
    }


class Final:
    """A run's interpretation at its end: one `analyze` pass per step, giving both the eval
    record (`record`) and the pictures and figures (`write`), so the eval split is read once.

    Args:
        model: The run's model.
        dataset_fn: `() -> dataset` of the eval split once, in order (global batches).
        num_classes, class_names: The task's.
        model_dir: Where the pictures go.
    """

    def __init__(self, model, dataset_fn, num_classes: int, class_names, model_dir: str):
        self.model, self.dataset_fn = model, dataset_fn
        self.num_classes, self.class_names = num_classes, class_names
        self.model_dir = model_dir
        self._analysis = (None, None)  # (step, Analysis)

    def analysis(self, step: int) -> Analysis:
        if self._analysis[0] != step:
            analysis = analyze(
                self.model, self.dataset_fn(), self.num_classes, class_names=self.class_names
            )
            self._analysis = (step, analysis)
        return self._analysis[1]

    def record(self, step: int) -> dict:
        """The eval record at `step` (`trainer.reporting.eval_metrics.record`'s keys)."""
        a = self.analysis(step)
        return {
            "loss": a.loss,
            "accuracy": a.accuracy,
            "examples": a.examples,
            **({} if a.top5 is None else {"top5": a.top5}),
        }

    def write(self, step: int) -> dict:
        """`write` of the analysis at `step` into model_dir; the metrics.json record."""
        return write(self.analysis(step), self.class_names, self.model_dir, step=step)
