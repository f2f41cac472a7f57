"""The study's datasets: subsets of real Fashion-MNIST and scikit-learn digits, as .npz files.

Nothing here is generated: every image is a real Fashion-MNIST photo or digit scan, read
through lrtech's own readers (`idx:`, `sklearn_digits`) and written as ``npz:`` files that
`run_train.py --dataset=npz:PATH` reads.

* ``fmnist_0to4.npz``: the near-domain *source*, Fashion-MNIST classes 0-4 (T-shirt/top,
  Trouser, Pullover, Dress, Coat), all 30,000 train and 5,000 test images; the near-domain
  pretrained model (`configs/pretrain_fashion_mnist_0to4.flags`) trains on it.
* ``near_k{K}_s{S}.npz``: the near-domain *target*, classes 5-9 (Sandal, Shirt, Sneaker, Bag,
  Ankle boot) relabelled 0-4: K training images per class drawn with seed S (``kall``: all
  6,000 per class), and the first 400 test images of each of those classes (2,000 of 5,000,
  to keep the study's evaluations within its time budget).
* ``digits_k{K}_s{S}.npz``: the cross-domain target, scikit-learn's digits with lrtech's fixed
  stratified split (1,442 train / 355 test): K training images per class drawn with seed S
  (``kall``: all 1,442), all 355 test images.

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
# The near-domain test set: the first 400 test images of each target class (2,000 of 5,000),
# the same for every run; each run evaluates it up to 6 times (final, SWA, ensembles).
NEAR_TEST_PER_CLASS = 400


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


def _first_per_class(images, labels, n: int):
    """The first `n` images of every class in file order (no randomness)."""
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c in np.unique(labels)]))
    return images[keep], labels[keep]


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


def target_npz(
    setting: str, per_class: int | None, seed: int, out: str, fashion_mnist=FASHION_MNIST_DIR
) -> str:
    """Writes (once) and returns a target dataset: setting "near" or "cross"."""
    tag = "all" if per_class is None else per_class
    if setting == "near":
        path = os.path.join(out, f"near_k{tag}_s{seed}.npz")
        if os.path.exists(path):
            return path
        train, test, names = _read(f"idx:{fashion_mnist}")
        x, y, kept = _classes(*train, TARGET_CLASSES, names)
        test = _first_per_class(*_classes(*test, TARGET_CLASSES, names)[:2], NEAR_TEST_PER_CLASS)
    elif setting == "cross":
        path = os.path.join(out, f"digits_k{tag}_s{seed}.npz")
        if os.path.exists(path):
            return path
        (x, y), test, kept = _read("sklearn_digits")
    else:
        raise ValueError(f"setting={setting!r}: 'near' or 'cross'")
    return _save(path, _subset(x, y, per_class, seed), test, kept)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/lrtech_study/data")
    parser.add_argument("--fashion_mnist", default=FASHION_MNIST_DIR)
    args = parser.parse_args(argv)
    print(source_npz(args.out, args.fashion_mnist))


if __name__ == "__main__":
    main()
