"""The study's datasets: subsets of real Fashion-MNIST and scikit-learn digits, as .npz files.

Nothing here is generated: every image is a real Fashion-MNIST photo or digit scan, read
through lrtech's own readers (`idx:`, `sklearn_digits`) and written as ``npz:`` files that
`run_train.py --dataset=npz:PATH` reads.

* ``fmnist_0to4.npz``: the near-domain *source*, Fashion-MNIST classes 0-4 (T-shirt/top,
  Trouser, Pullover, Dress, Coat), all 30,000 train and 5,000 test images; the near-domain
  pretrained model (`configs/pretrain_fashion_mnist_0to4.flags`) trains on it.
* ``near5k_k{K}_s{S}.npz``: the near-domain *target*, classes 5-9 (Sandal, Shirt, Sneaker, Bag,
  Ankle boot) relabelled 0-4: K training images per class drawn with seed S (``kall``: all
  6,000 per class), and all 5,000 test images of those classes.
* ``digits_k{K}_s{S}.npz``: the cross-domain target, scikit-learn's digits with lrtech's fixed
  stratified split (1,442 train / 355 test): K training images per class drawn with seed S
  (``kall``: all 1,442), all 355 test images.

* ``*_val.npz`` (`validation_npz`): the learning-rate grid's data. A fixed validation split
  (`VALIDATION_PER_CLASS` images per class, drawn once with `VALIDATION_SEED`) is held out of
  the *training* pool; K per class are drawn with seed S from the rest, and the file's
  ``x_test``/``y_test`` are the validation images. The test images are not in it.

Each seed draws its own labelled subset (the few-label results vary with which images are
labelled, and the study's spread should show it); every row of one seed sees the same subset,
so rows are compared on equal data.

    python3 -m experiments.data --out=/tmp/lrtech_study/data   # writes fmnist_0to4.npz
"""

from __future__ import annotations

import argparse
import os

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
# The validation split of the learning-rate grid, held out of the training pool: per class
# 30 of the digits' ~144 (300 of 1,442) and 200 of Fashion-MNIST's 6,000 (1,000).
VALIDATION_PER_CLASS = {"near": 200, "cross": 30}
VALIDATION_SEED = 20190615  # one fixed draw for every row, rate and seed


def _read(spec: str):
    from trainer.data import arrays

    train, test = arrays.load(spec, "train", "test")
    # Grayscale sources are repeated to 3 channels by the reader; store one (the npz reader
    # repeats it again), a third of the bytes.
    return (
        (train.images[..., 0], train.labels),
        (test.images[..., 0], test.labels),
        train.class_names,
    )


def _classes(images, labels, keep, names):
    mask = np.isin(labels, keep)
    remap = {c: i for i, c in enumerate(keep)}
    new = np.array([remap[int(y)] for y in labels[mask]], np.int32)
    return images[mask], new, tuple(names[c] for c in keep)


def _held_out(labels, per_class: int, seed: int):
    """A boolean mask of `per_class` images of every class, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        mask[rng.choice(np.flatnonzero(labels == c), per_class, replace=False)] = True
    return mask


def _subset(images, labels, per_class: int | None, seed: int):
    """`per_class` images of every class drawn without replacement with `seed`, sorted."""
    if per_class is None:
        return images, labels
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        if per_class > len(where):
            raise ValueError(f"class {c} has {len(where)} images, fewer than {per_class}")
        keep.append(rng.choice(where, per_class, replace=False))
    keep = np.sort(np.concatenate(keep))
    return images[keep], labels[keep]


def _save(path, train, test, names):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(
        tmp,
        x_train=train[0],
        y_train=train[1],
        x_test=test[0],
        y_test=test[1],
        class_names=np.array(names),
    )
    os.replace(tmp, path)
    return path


def source_npz(out: str, fashion_mnist: str = FASHION_MNIST_DIR) -> str:
    """Writes (once) and returns the near-domain source: Fashion-MNIST classes 0-4."""
    path = os.path.join(out, "fmnist_0to4.npz")
    if not os.path.exists(path):
        train, test, names = _read(f"idx:{fashion_mnist}")
        _save(
            path,
            _classes(*train, SOURCE_CLASSES, names)[:2],
            _classes(*test, SOURCE_CLASSES, names)[:2],
            [names[c] for c in SOURCE_CLASSES],
        )
    return path


def _pool(setting: str, fashion_mnist: str):
    """The setting's training pool, test set and class names."""
    if setting == "near":
        train, test, names = _read(f"idx:{fashion_mnist}")
        x, y, kept = _classes(*train, TARGET_CLASSES, names)
        return (x, y), _classes(*test, TARGET_CLASSES, names)[:2], kept
    if setting == "cross":
        return _read("sklearn_digits")
    raise ValueError(f"setting={setting!r}: 'near' or 'cross'")


def _path(setting: str, per_class: int | None, seed: int, out: str, suffix: str = "") -> str:
    tag = "all" if per_class is None else per_class
    # "near5k": the test set of all 5,000 images (v1 files, "near", held 2,000).
    prefix = {"near": "near5k", "cross": "digits"}.get(setting)
    if prefix is None:
        raise ValueError(f"setting={setting!r}: 'near' or 'cross'")
    return os.path.join(out, f"{prefix}_k{tag}_s{seed}{suffix}.npz")


def target_npz(
    setting: str, per_class: int | None, seed: int, out: str, fashion_mnist=FASHION_MNIST_DIR
) -> str:
    """Writes (once) and returns a target dataset: setting "near" or "cross"."""
    path = _path(setting, per_class, seed, out)
    if os.path.exists(path):
        return path
    (x, y), test, kept = _pool(setting, fashion_mnist)
    return _save(path, _subset(x, y, per_class, seed), test, kept)


def validation_npz(
    setting: str, per_class: int | None, seed: int, out: str, fashion_mnist=FASHION_MNIST_DIR
) -> str:
    """Writes (once) and returns the grid's dataset: training images drawn from the training
    pool minus the validation split, and that validation split as the evaluation set."""
    path = _path(setting, per_class, seed, out, "_val")
    if os.path.exists(path):
        return path
    (x, y), _, kept = _pool(setting, fashion_mnist)
    held = _held_out(y, VALIDATION_PER_CLASS[setting], VALIDATION_SEED)
    train = _subset(x[~held], y[~held], per_class, seed)
    return _save(path, train, (x[held], y[held]), kept)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/lrtech_study/data")
    parser.add_argument("--fashion_mnist", default=FASHION_MNIST_DIR)
    args = parser.parse_args(argv)
    print(source_npz(args.out, args.fashion_mnist))


if __name__ == "__main__":
    main()
