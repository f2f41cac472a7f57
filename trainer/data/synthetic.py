"""A SYNTHETIC image-classification dataset, generated offline and deterministically.

Not real data: each class is a shape (disk, square, triangle, plus, ring, diamond, X,
horizontally striped, vertically striped, checkered) drawn at a random position and size in a
random color on a random, noisy background, with a random distractor bar. A small CNN learns it
well above chance within a minute on a CPU, but not instantly (the shape has to be found under
noise in any color), so learning rates and schedules visibly matter.

Dataset specs: ``synthetic`` (10 classes) or ``synthetic:K`` with 2 <= K <= 10 (the first K
shapes; a different generator stream per K, so ``synthetic:5`` is not a subset of
``synthetic``). Images are 32x32x3 uint8, labels balanced.
"""

from __future__ import annotations

import numpy as np

from trainer.errors import UserError

CLASS_NAMES = (
    "disk",
    "square",
    "triangle",
    "plus",
    "ring",
    "diamond",
    "x",
    "hstripes",
    "vstripes",
    "checker",
)
SIZE = 32
# Fixed so the dataset is the same whatever the run's seed (the seed drives order/augment).
_DATA_SEED = 20_240_601
_SPLIT_IDS = {"train": 0, "test": 1}


def parse_spec(dataset: str) -> int:
    """Number of classes of a ``synthetic[:K]`` spec.

    Raises:
      UserError: K is not an integer in [2, 10].
    """
    if dataset == "synthetic":
        return len(CLASS_NAMES)
    text = dataset.split(":", 1)[1]
    if not text.isdigit() or not 2 <= int(text) <= len(CLASS_NAMES):
        raise UserError(
            f"--dataset={dataset}: expected synthetic:K with K an integer in 2..{len(CLASS_NAMES)}"
        )
    return int(text)


def _masks(label: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean shape masks; u, v are coordinates relative to each shape's center and radius."""
    r = np.sqrt(u * u + v * v)
    box = np.maximum(np.abs(u), np.abs(v))
    in_box = box <= 0.9
    candidates = [
        r <= 1.0,
        box <= 0.8,
        (np.abs(v) <= 0.8) & (np.abs(u) <= (v + 0.8) * 0.6),
        ((np.abs(u) <= 0.25) | (np.abs(v) <= 0.25)) & (box <= 1.0),
        (r >= 0.55) & (r <= 1.0),
        np.abs(u) + np.abs(v) <= 1.0,
        ((np.abs(u - v) <= 0.3) | (np.abs(u + v) <= 0.3)) & in_box,
        in_box & (np.floor((v + 1.0) * 2.5) % 2 == 0),
        in_box & (np.floor((u + 1.0) * 2.5) % 2 == 0),
        in_box & ((np.floor((u + 1.0) * 2.0) + np.floor((v + 1.0) * 2.0)) % 2 == 0),
    ]
    out = np.zeros(u.shape, bool)
    for k, mask in enumerate(candidates):
        out |= mask & (label == k)[:, None, None]
    return out


def _colors(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    background = rng.uniform(0, 255, (n, 3))
    # Foreground at least 100 levels away from the background in some channel: visible.
    foreground = rng.uniform(0, 255, (n, 3))
    far = np.abs(foreground - background).max(axis=1) >= 100
    while not far.all():
        foreground[~far] = rng.uniform(0, 255, ((~far).sum(), 3))
        far = np.abs(foreground - background).max(axis=1) >= 100
    return background, foreground


def generate(split: str, size: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Generates a split of the synthetic dataset.

    Args:
      split: "train" or "test".
      size: number of examples.
      num_classes: 2..10.

    Returns:
      (images uint8 [size, 32, 32, 3], labels int32 [size]).

    Raises:
      UserError: unknown split.
    """
    if split not in _SPLIT_IDS:
        raise UserError(f"--train_split/--eval_split={split!r}: synthetic has splits train, test")
    rng = np.random.default_rng([_DATA_SEED, _SPLIT_IDS[split], num_classes])
    labels = rng.permutation(np.arange(size) % num_classes).astype(np.int32)
    radius = rng.uniform(6.0, 11.0, size)
    cx = rng.uniform(radius, SIZE - radius)
    cy = rng.uniform(radius, SIZE - radius)
    grid = np.arange(SIZE, dtype=np.float64) + 0.5
    u = (grid[None, None, :] - cx[:, None, None]) / radius[:, None, None]
    v = (grid[None, :, None] - cy[:, None, None]) / radius[:, None, None]
    u, v = np.broadcast_arrays(u, v)
    mask = _masks(labels, u, v)
    background, foreground = _colors(rng, size)
    images = np.where(mask[..., None], foreground[:, None, None], background[:, None, None])
    # A distractor bar in a third color, at a random row or column.
    bar_color = rng.uniform(0, 255, (size, 3))
    bar_pos = rng.integers(0, SIZE - 2, size)
    vertical = rng.random(size) < 0.5
    rows = (grid[None, :] - 0.5 >= bar_pos[:, None]) & (grid[None, :] - 0.5 < bar_pos[:, None] + 2)
    bar = np.where(vertical[:, None, None], rows[:, None, :], rows[:, :, None])
    images = np.where(bar[..., None] & ~mask[..., None], bar_color[:, None, None], images)
    images = images + rng.normal(0.0, 30.0, images.shape)
    return np.clip(np.round(images), 0, 255).astype(np.uint8), labels
