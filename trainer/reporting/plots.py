"""The pictures of interpretation: confusion matrix and top losses (matplotlib, optional)."""

from __future__ import annotations

import io
import math

import numpy as np

from trainer.run_dir import files as run_dir

INSTALL_HINT = 'pip install -e ".[plots]" (or pip install matplotlib)'
# Above this many classes the cells are too small for their counts.
MAX_ANNOTATED_CLASSES = 30


def class_name(class_names, index: int):
    """The name of class `index`, or the index itself when `class_names` is too short."""
    names = tuple(class_names or ())
    return names[index] if 0 <= index < len(names) else int(index)


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
        run_dir.write_file(path, png)
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


def plot_top_losses(analysis, class_names, path: str | None) -> bytes:
    """Draws the highest-loss examples in a grid, worst first, as a PNG.

    Each image is titled "predicted / actual" and "probability / loss" (the probability of
    the predicted class); misclassified ones in red.

    `analysis` is `trainer.reporting.interpret.analyze`'s; `class_names`, `path`, the PNG bytes
    returned and `MissingMatplotlib` as for `plot_confusion_matrix`.
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
