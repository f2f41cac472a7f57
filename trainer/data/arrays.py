"""Real images held as arrays, read offline: a NumPy .npz, IDX files, scikit-learn's digits.

Dataset specs (``--dataset``):
  * ``npz:PATH``: a NumPy .npz with ``x_<split>`` images (uint8 [N, H, W] grayscale or
    [N, H, W, 1|3]) and ``y_<split>`` integer labels ([N], or [N, 1] as Keras' load_data
    returns them) for the train and eval splits (``x_train``, ``y_train``, ``x_test``,
    ``y_test`` by default), and optionally ``class_names`` (1-D str array). Written by e.g.
    ``np.savez(PATH, x_train=..., y_train=..., x_test=..., y_test=...)``.
  * ``idx:DIR``: the IDX files of MNIST / Fashion-MNIST, plain or .gz:
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``. Any ``*images*idx3*ubyte`` / ``*labels*idx1*ubyte`` pair
    whose name has the split as a ``-``/``_``/``.``-separated word is found (``test`` also
    matches ``t10k``; ``train-images.idx3-ubyte`` works too). Class names come from
    DIR/class_names.txt (one per line), else Fashion-MNIST's when DIR's name contains
    "fashion" (Debian's ``dataset-fashion-mnist`` installs /usr/share/datasets/fashion-mnist),
    else "0".."K-1".
  * ``sklearn_digits``: scikit-learn's bundled 1,797 8x8 scans of handwritten digits (values
    0..16 scaled to 0..255), an optional dependency. Split without randomness: within each
    class, in file order, every fifth example (positions 4, 9, 14, ...) is ``test`` (355
    images), the rest ``train`` (1,442): stratified 80/20, identical in every version.

Without class names, labels are named "0".."K-1", K = the largest label of the two loaded
splits + 1. Grayscale repeats to 3 channels; every split is decoded uint8 [N, H, W, 3] in
memory, so the index-based pipelines of `trainer.data.pipeline` apply unchanged. Each bad
input is a one-line `UserError` naming ``--dataset``, the file and the problem.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import zipfile
import zlib

import numpy as np

from trainer.data.sources import Split
from trainer.errors import UserError

PREFIXES = ("npz:", "idx:")
SKLEARN_DIGITS = "sklearn_digits"
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Without class names every label up to the largest gets a name; a stray huge label would
# make millions of them, so it is refused instead.
_MAX_CLASSES = 100_000
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_IDX_NAME = re.compile(
    r"^(?P<stem>.*?)[-_.](?P<kind>images|labels)[-_.]idx(?P<ndim>\d)[-_.]ubyte(?P<gz>\.gz)?$",
    re.IGNORECASE,
)
# The 1,797 digits are ordered 0, 1, ..., 9, 0, 1, ...; every fifth of a class is a test image.
_DIGITS_TEST_EVERY = 5


def is_spec(dataset: str) -> bool:
    """Whether `dataset` names an array source of this module."""
    return dataset.startswith(PREFIXES) or dataset == SKLEARN_DIGITS


def load(dataset: str, train_split: str, eval_split: str) -> tuple[Split, Split]:
    """Reads the two splits of an ``npz:PATH``, ``idx:DIR`` or ``sklearn_digits`` spec.

    Args:
      dataset: the spec.
      train_split: split name of the training data (``train`` reads x_train / train-*).
      eval_split: split name of the evaluation data (``test`` reads x_test / t10k-*).

    Returns:
      (train, eval) `Split`s of decoded uint8 [N, H, W, 3] images sharing one class list.

    Raises:
      UserError: a missing or malformed file or array, a missing split, bad labels, or
        scikit-learn not installed; one line naming --dataset, the file and the problem.
    """
    splits = {"--train_split": train_split, "--eval_split": eval_split}
    if dataset.startswith("npz:"):
        arrays, names, named_by = _read_npz(dataset, dataset[len("npz:") :], splits)
    elif dataset.startswith("idx:"):
        arrays, names, named_by = _read_idx_dir(dataset, dataset[len("idx:") :], splits)
    elif dataset == SKLEARN_DIGITS:
        arrays, names, named_by = _read_digits(dataset, splits)
    else:
        raise UserError(f"--dataset={dataset}: not an npz:PATH, idx:DIR or sklearn_digits spec")
    class_names = _class_names(dataset, arrays, names, named_by)
    train, evaluation = (_split(*arrays[s][:2], class_names) for s in (train_split, eval_split))
    return train, evaluation


# Validation shared by every source ---------------------------------------------------------


def _split(images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> Split:
    return Split(images, labels, False, class_names, images.shape[1:])


def _images(dataset: str, what: str, x: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] from [N, H, W] or [N, H, W, 1|3]."""
    if x.dtype != np.uint8:
        raise UserError(
            f"--dataset={dataset}: {what} has dtype {x.dtype}, expected uint8 pixels 0..255"
        )
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or 0 in x.shape[1:]:
        raise UserError(
            f"--dataset={dataset}: {what} has shape {x.shape}, expected [N, H, W] or [N, H, W, 1|3]"
        )
    if not len(x):
        raise UserError(f"--dataset={dataset}: {what} is empty (0 images)")
    if x.shape[-1] == 1:
        return np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x)


def _labels(dataset: str, what: str, y: np.ndarray, num_images: int, images: str) -> np.ndarray:
    """int32 [N] class indices >= 0 from integer [N] or [N, 1]."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(
            f"--dataset={dataset}: {what} has shape {y.shape}, expected [N] class indices "
            "(one-hot? save y.argmax(axis=1))"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(
            f"--dataset={dataset}: {what} has dtype {y.dtype}, expected integer class indices"
        )
    if len(y) != num_images:
        raise UserError(
            f"--dataset={dataset}: {images} has {num_images} images but {what} has {len(y)} labels"
        )
    low = int(y.min())
    if low < 0:
        first = int(np.argmax(y < 0))
        raise UserError(
            f"--dataset={dataset}: {what} has negative label {low} (first at index {first})"
        )
    if int(y.max()) >= 2**31:
        raise UserError(f"--dataset={dataset}: {what} has label {int(y.max())}, too large")
    return y.astype(np.int32)


def _class_names(dataset: str, arrays: dict, names, named_by: str) -> tuple[str, ...]:
    """The given names (from `named_by`), checked to cover every label, or "0".."K-1"."""
    top, where = max((int(labels.max()), what) for _, labels, what in arrays.values())
    if names is None:
        if top >= _MAX_CLASSES:
            raise UserError(
                f"--dataset={dataset}: {where} has label {top}, too large for class names "
                f"0..{top}; labels must be class indices"
            )
        return tuple(str(k) for k in range(top + 1))
    if top >= len(names):
        raise UserError(
            f"--dataset={dataset}: {where} has label {top}, but there are {len(names)} class "
            f"names (labels 0..{len(names) - 1}) in {named_by}"
        )
    return names


def _checked_names(dataset: str, what: str, names) -> tuple[str, ...]:
    names = tuple(names)
    if not names:
        raise UserError(f"--dataset={dataset}: {what} is empty")
    if "" in names:
        raise UserError(f"--dataset={dataset}: {what} has an empty name at {names.index('')}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"--dataset={dataset}: {what} repeats {', '.join(duplicates)}")
    return names


def _split_names(dataset: str, splits: dict[str, str], available) -> None:
    for flag, split in splits.items():
        if split not in available:
            raise UserError(
                f"--dataset={dataset}: no split {split!r} ({flag}); it has {', '.join(available)}"
            )


# NumPy .npz ----------------------------------------------------------------------------------


def _read_npz(dataset: str, path: str, splits: dict[str, str]):
    if not path:
        raise UserError(f"--dataset={dataset}: give the file, as npz:PATH")
    if not os.path.isfile(path):
        raise UserError(f"--dataset={dataset}: no such file {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        raise UserError(f"--dataset={dataset}: {path} is not a NumPy .npz file") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(
            f"--dataset={dataset}: {path} is a single .npy array, not an .npz with x_train, "
            "y_train, x_test, y_test (np.savez)"
        )
    with archive:
        keys = archive.files
        arrays = {}
        for flag, split in splits.items():
            if split in arrays:
                continue
            for key in (f"x_{split}", f"y_{split}"):
                if key not in keys:
                    raise UserError(
                        f"--dataset={dataset}: {path} has no array {key!r} (for {flag}={split}; "
                        f"it has {', '.join(keys) or 'none'})"
                    )
            x_key, y_key = f"x_{split}", f"y_{split}"
            images = _images(dataset, x_key, _npz_array(dataset, archive, x_key))
            labels = _labels(
                dataset, y_key, _npz_array(dataset, archive, y_key), len(images), x_key
            )
            arrays[split] = (images, labels, y_key)
        names = None
        if "class_names" in keys:
            names = _npz_class_names(dataset, _npz_array(dataset, archive, "class_names"))
    return arrays, names, "class_names"


def _npz_array(dataset: str, archive, key: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UserError(
                f"--dataset={dataset}: {key} is an object array, which is not loaded (pickle); "
                "save it with a plain dtype (np.asarray(names, dtype=str) for class_names)"
            ) from None
        raise UserError(f"--dataset={dataset}: cannot read {key} ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(f"--dataset={dataset}: cannot read {key} ({e})") from None


def _npz_class_names(dataset: str, names: np.ndarray) -> tuple[str, ...]:
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise UserError(
            f"--dataset={dataset}: class_names has dtype {names.dtype} and shape {names.shape}, "
            "expected a 1-D array of str"
        )
    if names.dtype.kind == "S":
        names = np.char.decode(names, "utf-8")
    return _checked_names(dataset, "class_names", (str(n) for n in names))


# IDX files (MNIST, Fashion-MNIST) --------------------------------------------------------------


def _read_idx_dir(dataset: str, root: str, splits: dict[str, str]):
    if not root:
        raise UserError(f"--dataset={dataset}: give the directory, as idx:DIR")
    if not os.path.isdir(root):
        raise UserError(f"--dataset={dataset}: no such directory {root}")
    files = sorted(os.listdir(root))
    arrays = {}
    for flag, split in splits.items():
        if split in arrays:
            continue
        image_file = _idx_file(dataset, root, files, split, flag, "images", 3)
        label_file = _idx_file(dataset, root, files, split, flag, "labels", 1)
        raw_images = _read_idx(dataset, image_file, _IDX_IMAGES_MAGIC, 3)
        raw_labels = _read_idx(dataset, label_file, _IDX_LABELS_MAGIC, 1)
        images = _images(dataset, image_file, raw_images)
        labels = _labels(dataset, label_file, raw_labels, len(images), image_file)
        arrays[split] = (images, labels, label_file)
    names_file = os.path.join(root, "class_names.txt")
    if os.path.isfile(names_file):
        return arrays, _read_class_names(dataset, names_file), names_file
    if "fashion" in os.path.basename(os.path.normpath(root)).lower():
        # Add class_names.txt to name the classes of another dataset in a "fashion" directory.
        return arrays, FASHION_MNIST_CLASS_NAMES, f"Fashion-MNIST's (no {names_file})"
    return arrays, None, names_file


def _idx_file(dataset, root, files, split, flag, kind, ndim) -> str:
    """The one file of `split` and `kind` in `root`, preferring plain to .gz."""
    words = {"t10k", "test"} if split.lower() in ("test", "t10k") else {split.lower()}
    found = {}
    for name in files:
        match = _IDX_NAME.match(name)
        if not match or match["kind"].lower() != kind or int(match["ndim"]) != ndim:
            continue
        if words & set(re.split(r"[-_.]", match["stem"].lower())):
            plain = name[: -len(".gz")] if match["gz"] else name
            if plain not in found or not match["gz"]:
                found[plain] = name
    pattern = f"{'t10k' if 'test' in words else split}-{kind}-idx{ndim}-ubyte[.gz]"
    if not found:
        idx = [f for f in files if _IDX_NAME.match(f)]
        has = f"; it has {', '.join(idx)}" if idx else "; it has no IDX files"
        raise UserError(
            f"--dataset={dataset}: no {split} {kind} file ({flag}={split}: {pattern}) "
            f"in {root}{has}"
        )
    if len(found) > 1:
        raise UserError(
            f"--dataset={dataset}: several {split} {kind} files in {root}: "
            f"{', '.join(sorted(found.values()))}; keep one"
        )
    return os.path.join(root, found.popitem()[1])


def _read_idx(dataset: str, path: str, magic: int, ndim: int) -> np.ndarray:
    """An IDX file's unsigned-byte array: big-endian magic, `ndim` big-endian uint32 sizes."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(f"--dataset={dataset}: cannot read {path} ({e})") from None
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        what = "images" if ndim == 3 else "labels"
        got = "under 4 bytes" if found is None else f"magic number 0x{found:08x}"
        raise UserError(
            f"--dataset={dataset}: {path} is not an IDX {what} file ({got}, expected "
            f"0x{magic:08x}: unsigned bytes, {ndim}-D)"
        )
    if len(raw) < header:
        raise UserError(f"--dataset={dataset}: {path} is truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    data = len(raw) - header
    names = ("images", "rows", "columns") if ndim == 3 else ("labels",)
    for name, dim in zip(names, dims):
        # A dimension past the data cannot be right (0xFFFFFFFF: a damaged header); naming
        # it beats a product of the sizes, which no one can check.
        if dim > max(data, 1):
            raise UserError(
                f"--dataset={dataset}: {path}: its header says {dim} {name}, more than its "
                f"{data} data bytes hold (header dimensions {', '.join(map(str, dims))})"
            )
    size = math.prod(dims)
    if data != size:
        said = f"{dims[0]} images of {dims[1]} x {dims[2]}" if ndim == 3 else f"{dims[0]} labels"
        raise UserError(
            f"--dataset={dataset}: {path} has {data} data bytes, but its header says {said} "
            f"({size} bytes)"
        )
    return np.frombuffer(raw, np.uint8, size, header).reshape(dims)


def _read_class_names(dataset: str, path: str) -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f.read().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--dataset={dataset}: cannot read {path} ({e})") from None
    while lines and not lines[-1]:
        lines.pop()
    return _checked_names(dataset, path, lines)


# scikit-learn's digits ---------------------------------------------------------------------


def _read_digits(dataset: str, splits: dict[str, str]):
    _split_names(dataset, splits, ("train", "test"))
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError(
            f"--dataset={dataset}: needs scikit-learn: pip install scikit-learn"
        ) from None
    digits = load_digits()
    # Values are integers 0..16 (counts of set pixels in 4x4 blocks of a 32x32 bitmap).
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(images[..., np.newaxis], 3, axis=-1)
    labels = digits.target.astype(np.int32)
    test = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        test[where[_DIGITS_TEST_EVERY - 1 :: _DIGITS_TEST_EVERY]] = True
    arrays = {
        "train": (images[~test], labels[~test], "train"),
        "test": (images[test], labels[test], "test"),
    }
    return arrays, tuple(str(n) for n in digits.target_names), "load_digits"
