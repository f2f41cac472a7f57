"""What a classifier gets wrong: confusion matrix, per-class figures, top losses (fastai's
`ClassificationInterpretation`, for lrtech).

    analysis = interpret.analyze(model, source.eval_dataset(128), num_classes)
    record = interpret.write(analysis, source.info.class_names, model_dir, step=step)

`analyze` makes one pass over a finite dataset of (images, labels) batches and computes the
training loop's eval metrics the way `trainer.loop.compiled.EvalLoop` does (mean sparse
cross-entropy
from logits, accuracy, top-5 above 5 classes, sums in float64 divided by the true example
count), plus the confusion matrix and the k examples with the highest loss. It streams: only
the k worst images are ever kept. `write` draws confusion_matrix.png and top_losses.png into
model_dir, adds both as TensorBoard images under tensorboard/eval, and returns the per-class
figures and the matrix for a JSON record. Without matplotlib it skips the pictures with one
warning; the numbers never need it.

Class names are per index; a class beyond the end of the list is named by its index.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.reporting import eval_metrics

INSTALL_HINT = 'pip install -e ".[plots]" (or pip install matplotlib)'
CONFUSION_FILE = "confusion_matrix.png"
TOP_LOSSES_FILE = "top_losses.png"
# Above this many classes the cells are too small for their counts.
MAX_ANNOTATED_CLASSES = 30


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


def class_name(class_names, index: int):
    """The name of class `index`, or the index itself when `class_names` is too short."""
    names = tuple(class_names or ())
    return names[index] if 0 <= index < len(names) else int(index)


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


# Pictures ------------------------------------------------------------------------------------


class MissingMatplotlib(ImportError):
    """matplotlib is not installed."""


def _figure(**kwargs):
    # A bare Figure draws with Agg and touches no pyplot state (no global backend switch).
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingMatplotlib(f"matplotlib is needed for the pictures: {INSTALL_HINT}") from e
    return Figure(**kwargs)


def _save(fig, path: str | None) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    png = buffer.getvalue()
    if path:
        tmp = f"{path}.tmp-{os.getpid()}"
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(png)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    return png


def plot_confusion_matrix(confusion, class_names, path: str | None) -> bytes:
    """Draws the confusion matrix (rows actual, columns predicted) as a PNG.

    Cells show their counts up to `MAX_ANNOTATED_CLASSES` classes; the title gives the
    accuracy (the diagonal over the total).

    Args:
        confusion: int [K, K] counts, rows = actual class.
        class_names: Names per index (see `class_name`).
        path: Where to write the PNG (its directory must exist); None writes nothing.

    Returns:
        The PNG bytes.

    Raises:
        MissingMatplotlib: matplotlib is not installed.
    """
    confusion = np.asarray(confusion, np.int64)
    k = confusion.shape[0]
    total = int(confusion.sum())
    correct = int(np.trace(confusion))
    accuracy = correct / total if total else 0.0
    side = min(4.0 + 0.45 * k, 24.0)  # inches
    fig = _figure(figsize=(side + 1.5, side), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(confusion, cmap="Blues", interpolation="nearest", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    names = [str(class_name(class_names, i)) for i in range(k)]
    fontsize = 10 if k <= 12 else 8 if k <= 30 else 5
    ax.set_xticks(range(k), names, rotation=90 if k > 6 else 45, ha="center", fontsize=fontsize)
    ax.set_yticks(range(k), names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Confusion matrix: accuracy {accuracy:.4f} ({correct}/{total})")
    if k <= MAX_ANNOTATED_CLASSES:
        threshold = confusion.max() / 2 if confusion.size else 0
        for (row, col), value in np.ndenumerate(confusion):
            ax.text(
                col,
                row,
                str(value),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if value > threshold else "black",
            )
    fig.tight_layout()
    return _save(fig, path)


def _displayable(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.rint(np.clip(image.astype(np.float64), 0, 255)).astype(np.uint8)
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def plot_top_losses(analysis: Analysis, class_names, path: str | None) -> bytes:
    """Draws the highest-loss examples in a grid, worst first, as a PNG.

    Each image is titled "predicted / actual" and "probability / loss" (the probability of
    the predicted class); misclassified ones in red.

    Args:
        analysis: From `analyze`.
        class_names: Names per index (see `class_name`).
        path: Where to write the PNG (its directory must exist); None writes nothing.

    Returns:
        The PNG bytes.

    Raises:
        MissingMatplotlib: matplotlib is not installed.
    """
    top = analysis.top_losses
    n = len(top)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    fig = _figure(figsize=(2.4 * cols, 2.5 * rows + 0.5), dpi=100)
    fig.suptitle("predicted / actual / probability / loss")
    if n == 0:
        fig.text(0.5, 0.5, "no examples", ha="center", va="center")
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        image = _displayable(top.images[i])
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        ax.set_axis_off()
        predicted = class_name(class_names, int(top.predicted[i]))
        actual = class_name(class_names, int(top.actual[i]))
        ax.set_title(
            f"{predicted} / {actual}\n{top.probability[i]:.2f} / {top.loss[i]:.2f}",
            fontsize=9,
            color="black" if top.predicted[i] == top.actual[i] else "red",
        )
    fig.tight_layout()
    return _save(fig, path)


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


def write(analysis: Analysis, class_names, model_dir: str, *, step=0, tensorboard=True) -> dict:
    """Writes the pictures into `model_dir` and TensorBoard; returns the JSON record.

    Writes model_dir/confusion_matrix.png and model_dir/top_losses.png and, with
    `tensorboard`, the same two pictures as images "confusion_matrix" and "top_losses" at
    `step` in model_dir/tensorboard/eval. Without matplotlib the pictures are skipped with
    one warning.

    Returns:
        {"per_class": [...], "confusion_matrix": [[...], ...]} (rows = actual class).
    """
    tf.io.gfile.makedirs(model_dir)
    pictures = {}
    try:
        pictures["confusion_matrix"] = plot_confusion_matrix(
            analysis.confusion, class_names, os.path.join(model_dir, CONFUSION_FILE)
        )
        pictures["top_losses"] = plot_top_losses(
            analysis, class_names, os.path.join(model_dir, TOP_LOSSES_FILE)
        )
    except MissingMatplotlib:
        logging.warning(
            "matplotlib is not installed: no %s / %s (%s)",
            CONFUSION_FILE,
            TOP_LOSSES_FILE,
            INSTALL_HINT,
        )
        pictures = {}
    if tensorboard and pictures:
        write_images(os.path.join(model_dir, "tensorboard", "eval"), int(step), pictures)
    return {
        "per_class": per_class(analysis.confusion, class_names),
        "confusion_matrix": analysis.confusion.tolist(),
    }
