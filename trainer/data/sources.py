"""The `Split` a dataset split loads into; an image folder or the synthetic set (TFDS splits:
`trainer.data.tfds_source`).

A split is held as `Split`: decoded uint8 images of one fixed shape, the encoded image files
(bytes) when shapes vary or the decoded split would not fit the cache budget, or, with
``--cache=none`` (or ``auto`` above the budget), only the sorted file list of a folder
(`folder_listing`) or the labels and a random-access data source of an ArrayRecord-prepared
TFDS split (`trainer.data.tfds_source`), each image read on demand. The pipelines in
`trainer.data.pipeline` gather from it by index, which is what makes them a pure function of
(seed, step) in every case.

Loading prints nothing: run_train.py reports a failed load as one line on stderr, so warnings
are returned in `Split.warnings` (the caller logs them once the whole dataset has loaded) and
the image decoders' stderr output is captured.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from trainer.config import IMAGE_EXTENSIONS
from trainer.data import corrupt
from trainer.data import synthetic as synthetic_lib
from trainer.errors import UserError

# Decoded TFDS splits above this stay encoded in memory and are decoded on the fly
# (--cache=memory); --cache=auto holds a split in memory only below CACHE_BUDGET_BYTES.
MAX_DECODED_BYTES = 2 * 1024**3
# --cache=auto: a split whose decoded pixels (estimated) exceed this is read on demand.
CACHE_BUDGET_BYTES = 1024**3


@dataclasses.dataclass(frozen=True)
class Split:
    """One split. `images` is uint8 [N, H, W, 3] or, when `encoded`, bytes [N] in memory.

    When `files` is set, `images` is None: the split holds only the sorted file names (bytes
    [N], relative to `root`) and labels; each image is read and decoded on demand by the
    pipeline (`encoded` is then True: the images are encoded files).

    When `source` is set (a TFDS random-access data source whose `image_key` feature is left
    encoded), `images` is None too: the pipeline fetches example i's encoded image by index
    and decodes it. `encoded` then names the preprocessing regime the in-memory load of the
    same split would take (False: fixed-shape images small enough to hold decoded), so every
    `--cache` policy gives the same batches; `root` prefixes the index in error messages.

    When `records` is set (`trainer.data.streaming.Records`: a TFRecord-prepared TFDS split
    too large for memory), `images` is None and `labels` empty: the split is read as a
    stream (`trainer.data.streaming`), with `encoded` naming the preprocessing regime as for
    a data source.

    `warnings` are messages for the user (empty class directories, skipped files), to be
    logged only once every split has loaded.
    """

    images: np.ndarray | None
    labels: np.ndarray  # int32 [N]
    encoded: bool
    class_names: tuple[str, ...]
    image_shape: tuple[int | None, int | None, int]
    num_skipped: int = 0
    warnings: tuple[str, ...] = ()
    files: np.ndarray | None = None  # bytes [N] paths relative to root, read on demand
    root: str = ""  # directory the files are relative to (ends with a separator)
    source: object | None = None  # TFDS data source: source[i][image_key] is encoded bytes
    image_key: str = ""
    records: object | None = None  # `streaming.Records`: TFRecord files read as a stream

    @property
    def num_examples(self) -> int:
        """Examples in the split (a stream's from the TFDS metadata: labels are not read)."""
        return self.records.num_examples if self.records is not None else len(self.labels)

    @property
    def on_demand(self) -> bool:
        """Whether images are read (files or data source) by the pipeline, not held in memory."""
        return self.files is not None or self.source is not None

    @property
    def nbytes(self) -> int:
        """Bytes this split holds in memory: pixels or encoded files, labels, file names.

        A data source's own buffers (file handles, reader state) are not counted.
        """
        total = self.labels.nbytes
        if self.images is not None:
            if self.images.dtype == object:
                total += self.images.nbytes + sum(len(b) for b in self.images)
            else:
                total += self.images.nbytes
        if self.files is not None:
            total += self.files.nbytes
        return total


def synthetic(dataset: str, split: str, size: int) -> Split:
    """The `trainer.data.synthetic` split of a ``synthetic[:K]`` spec."""
    num_classes = synthetic_lib.parse_spec(dataset)
    if size < 1:
        raise UserError(f"--synthetic_train_size/--synthetic_test_size={size} must be >= 1")
    images, labels = synthetic_lib.generate(split, size, num_classes)
    names = synthetic_lib.CLASS_NAMES[:num_classes]
    return Split(images, labels, False, names, images.shape[1:])


# Image folder --------------------------------------------------------------------------------


def _class_dirs(root: str, split: str) -> list[str]:
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise UserError(f"--dataset=folder:{root}: missing directory {path} (<split>/<label>/*)")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not classes:
        raise UserError(f"--dataset=folder:{root}: {path} has no class subdirectories")
    return classes


def folder_class_names(root: str, train_split: str) -> tuple[str, ...]:
    """Sorted class directory names of the training split: label i is the i-th name."""
    if not os.path.isdir(root):
        raise UserError(f"--dataset=folder:{root}: no such directory")
    return tuple(_class_dirs(root, train_split))


def folder_listing(root: str, split: str, class_names: tuple[str, ...]):
    """The sorted image files of root/split/<class>/ and their labels; no file is opened.

    Returns:
      (names, labels, warnings): names are "<class>/<file>" relative to root/split, sorted by
      class then file name; labels int32 [N] index `class_names`; a warning per empty class.

    Raises:
      UserError: a missing directory, a class not in the train split, or no image at all.
    """
    names, labels, warnings = [], [], []
    for name in _class_dirs(root, split):
        if name not in class_names:
            raise UserError(f"--dataset=folder:{root}: class {name!r} of {split} not in train")
        class_dir = os.path.join(root, split, name)
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            warnings.append(f"folder {root}: class directory {class_dir} has no images")
        label = class_names.index(name)
        names.extend(f"{name}/{f}" for f in files)
        labels.extend([label] * len(files))
    if not names:
        raise UserError(f"--dataset=folder:{root}: no images in {split}")
    return names, np.array(labels, np.int32), warnings


def _estimated_pixel_bytes(directory: str, names: list[str]) -> int | None:
    """N times the decoded size of the first readable of the first few files (None if none)."""
    for name in names[:8]:
        path = os.path.join(directory, name)
        read = None if corrupt.check_file(path)[0] else corrupt.read_image(path)
        if read is not None:
            return len(names) * int(np.prod(read[1]))
    return None


def _checked_listing(root: str, directory: str, names: list[str], labels, skip_corrupt: bool):
    """(names, labels, skipped paths) without the files `corrupt.check_files` finds bad.

    Raises:
      UserError: the first bad file, naming it and why, when `skip_corrupt` is False.
    """
    bad = corrupt.check_files([os.path.join(directory, name) for name in names])
    if not bad:
        return names, labels, []
    first = min(bad)
    if not skip_corrupt:
        raise UserError(
            f"--dataset=folder:{root}: cannot read image {os.path.join(directory, names[first])}"
            f": {bad[first]} (remove it or pass --skip_corrupt)"
        )
    skipped = [f"{os.path.join(directory, names[i])} ({why})" for i, why in sorted(bad.items())]
    keep = [i for i in range(len(names)) if i not in bad]
    return [names[i] for i in keep], labels[keep], skipped


def folder_split(
    root: str,
    split: str,
    class_names: tuple[str, ...],
    skip_corrupt: bool,
    cache: str = "memory",
) -> Split:
    """The images of root/split/<class>/: the file list only, or read into memory.

    With `cache` "none" the split keeps the sorted file names and labels (`Split.files`) and
    the pipeline reads each image when its step needs it; each file is checked now by its
    first and last bytes (`corrupt.check_files`: no decode, but for a file whose end looks
    truncated). "memory" reads every file now (bytes kept encoded, each checked to decode).
    "auto" reads into memory when the first image's decoded size times the number of files
    fits `CACHE_BUDGET_BYTES`, else keeps the file list.

    An empty class directory keeps its label index (labels follow the sorted train class
    directories) and adds a warning: a split may lack a class without shifting the others.
    Skipped files add one warning naming the first of them.

    Raises:
      UserError: a missing directory, a class not in the train split, no image at all, or
        an unreadable file when `skip_corrupt` is False, naming it.
    """
    names, labels, warnings = folder_listing(root, split, class_names)
    directory = os.path.join(root, split, "")
    if cache == "auto":
        estimate = _estimated_pixel_bytes(directory, names)
        cache = "memory" if estimate is None or estimate <= CACHE_BUDGET_BYTES else "none"
    if cache == "none":
        names, labels, skipped = _checked_listing(root, directory, names, labels, skip_corrupt)
        if skipped:
            warnings.append(
                f"folder {root}/{split}: skipped {len(skipped)} unreadable images, e.g. "
                f"{skipped[0]}"
            )
        if not names:
            raise UserError(f"--dataset=folder:{root}: no readable images in {split}")
        # Bytes, not str: numpy's str dtype takes 4 bytes per character.
        files = np.array([n.encode() for n in names], dtype=bytes)
        return Split(
            None,
            labels,
            True,
            class_names,
            (None, None, 3),
            len(skipped),
            tuple(warnings),
            files,
            directory,
        )
    files, kept, shapes, skipped = [], [], set(), []
    for name, label in zip(names, labels):
        path = os.path.join(directory, name)
        why, _ = corrupt.check_file(path)  # e.g. a FIFO, which open() would wait on
        read = None if why else corrupt.read_image(path)
        if read is None:
            why = why or corrupt.DOES_NOT_DECODE
            if not skip_corrupt:
                raise UserError(
                    f"--dataset=folder:{root}: cannot read image {path}: {why} "
                    "(remove it or pass --skip_corrupt)"
                )
            skipped.append(f"{path} ({why})")
            continue
        files.append(read[0])
        shapes.add(read[1])
        kept.append(label)
    if skipped:
        warnings.append(
            f"folder {root}/{split}: skipped {len(skipped)} unreadable images, e.g. {skipped[0]}"
        )
    if not files:
        raise UserError(f"--dataset=folder:{root}: no readable images in {split}")
    image_shape = shapes.pop() if len(shapes) == 1 else (None, None, 3)
    return Split(
        np.array(files, dtype=object),
        np.array(kept, np.int32),
        True,
        class_names,
        image_shape,
        len(skipped),
        tuple(warnings),
    )
