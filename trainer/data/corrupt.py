"""Images that cannot be read: found at start-up where that is cheap, else named at run time.

A folder read on demand (``--cache=none``) is checked when it is listed (`check_files`): each
file is opened once and its first and last bytes read (two small reads, no decode), so a
directory named x.jpg, a symlink loop, an unreadable or empty file, a file that is not a
JPEG, PNG, GIF or BMP, and a truncated image (its end marker missing; confirmed by decoding
it) stop the run before training with one line naming the file, or are left out with
``--skip_corrupt``, as a folder read into memory is (which uses `check_file` for the same
words, then decodes every file).

What only decoding finds (damage inside a file whose ends look right, a file replaced or
deleted during the run, a TFDS record or TFRecord image that does not decode) surfaces where
the batch holding it is built, inside the tf.data pipeline (`decode_batch`): a
`tf.debugging.Assert` fails, and whoever iterates the dataset gets a
`tf.errors.InvalidArgumentError` whose message names the examples, also from inside a
compiled loop over a distributed dataset. `user_error` / `user_errors` turn exactly those
errors into an `UnreadableImageError` (a `UserError`: one line, exit code 2). With
``--skip_corrupt`` the pipeline logs the example once, counts it (`ReadFailures`) and fills
its slot instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import threading

import numpy as np
import tensorflow as tf

from trainer import runtime
from trainer.errors import UserError

# The first bytes tf.io.decode_image recognizes, for the formats a folder may hold.
_SIGNATURES = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
}
_HEAD = 16  # bytes read from the start of each file
_TAIL = 64  # bytes read from its end: where the format's end marker is
_NOT_AN_IMAGE = "not a JPEG, PNG, GIF or BMP file"
DOES_NOT_DECODE = "it does not decode (truncated or damaged)"
_UNREADABLE = "cannot read or decode image"
_ALL_UNREADABLE = "every image of a batch is unreadable, e.g."
# tf.debugging.Assert prints each of its data items in brackets: [what: problem] [names] [hint].
_ASSERT = re.compile(
    r"assertion failed: \[(?P<head>[^\n]*?: (?:"
    + re.escape(_UNREADABLE)
    + "|"
    + re.escape(_ALL_UNREADABLE)
    + r"))\] \[(?P<names>[^\n]*)\] \[(?P<hint>\([^\n]*\))\]"
)


class UnreadableImageError(UserError):
    """An image read on demand did not read or decode while its batch was built.

    `names` is how the pipeline named the examples: file paths, ``"DATASET SPLIT #i"`` for a
    TFDS data source, ``"FILE record N"`` for a TFRecord stream (comma-separated).
    """

    def __init__(self, message: str, names: str):
        super().__init__(message)
        self.names = names


def user_error(error: BaseException) -> UnreadableImageError | None:
    """The one-line `UnreadableImageError` of a pipeline error `decode_batch` raised, or None
    for any other error (TensorFlow's message, several lines, carries the assertion)."""
    if not isinstance(error, tf.errors.InvalidArgumentError):
        return None
    match = _ASSERT.search(str(error))
    if match is None:
        return None
    message = f"{match['head']} {match['names']} {match['hint']}"
    return UnreadableImageError(message, match["names"])


@contextlib.contextmanager
def user_errors():
    """Re-raises a pipeline's unreadable-image error (`user_error`) as its one-line
    `UnreadableImageError`; every other error passes unchanged."""
    try:
        yield
    except tf.errors.InvalidArgumentError as e:
        error = user_error(e)
        if error is None:
            raise
        raise error from None


# Start-up checks ---------------------------------------------------------------------------


def _format(head: bytes) -> str | None:
    for name, signatures in _SIGNATURES.items():
        if head.startswith(signatures):
            return name
    return None


def _ends_complete(kind: str, head: bytes, tail: bytes, size: int) -> bool:
    """Whether the file's end looks like its format's end (else: truncated, or trailing
    bytes after the end marker, which a decode tells apart)."""
    if kind == "JPEG":
        return b"\xff\xd9" in tail  # EOI; entropy-coded data never holds FF D9
    if kind == "PNG":
        return b"IEND" in tail
    if kind == "GIF":
        return tail.rstrip(b"\x00").endswith(b";")  # the trailer byte
    declared = int.from_bytes(head[2:6], "little")  # BMP: the file size in its header
    return size >= declared


def check_file(path: str) -> tuple[str | None, bool]:
    """(why `path` cannot be an image, or None; whether its end looks complete).

    One open, one fstat and two small reads; nothing is decoded. A file whose end looks
    incomplete may still decode (bytes after the end marker): `check_files` decodes it.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return f"cannot open it ({e.strerror})", True
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            return "a directory, not a file", True
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file", True
        if info.st_size == 0:
            return "an empty file (0 bytes)", True
        head = os.pread(fd, _HEAD, 0)
        kind = _format(head)
        if kind is None:
            return f"{_NOT_AN_IMAGE} (it starts with {head[:8].hex(' ')})", True
        tail = os.pread(fd, _TAIL, max(info.st_size - _TAIL, 0))
        return None, _ends_complete(kind, head, tail, info.st_size)
    except OSError as e:
        return f"cannot read it ({e.strerror})", True
    finally:
        os.close(fd)


def read_image(path: str) -> tuple[bytes, tuple[int, ...]] | None:
    """The file's bytes and decoded shape, or None if it does not read or decode."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    # libjpeg prints its warnings and errors ("Corrupt JPEG data: ...", "Premature end of JPEG
    # file", "Improper call to JPEG library ...") and TensorFlow's decoders log theirs straight
    # to fd 2, in no common format. Everything written during this one decode is about this
    # file, whose fate the caller reports (an error naming it, or the skipped-files warning).
    with runtime.captured_stderr(drop=True):
        try:
            shape = tf.io.decode_image(data, channels=3, expand_animations=False).shape
        except tf.errors.InvalidArgumentError:
            return None
    return data, tuple(shape)


def check_files(paths: list[str]) -> dict[int, str]:
    """{index: why} of the `paths` that cannot be images (`check_file`); a file whose end
    looks incomplete is decoded, and listed when it does not decode."""
    bad = {}
    for i, path in enumerate(paths):
        reason, complete = check_file(path)
        if reason is None and not complete and read_image(path) is None:
            reason = DOES_NOT_DECODE
        if reason is not None:
            bad[i] = reason
    return bad


# In the pipeline ---------------------------------------------------------------------------


class ReadFailures:
    """Examples of an on-demand split found unreadable while the pipeline ran.

    `what` opens every message (e.g. "--dataset=folder:/data"); with `skip` they are logged
    once and recorded instead of stopping the run. Thread-safe: tf.data reports from its own
    threads. `paths` is the sorted list so far.
    """

    def __init__(self, what: str, skip: bool):
        self.what = what
        self.skip = skip
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    @property
    def paths(self) -> list[str]:
        with self._lock:
            return sorted(self._seen)

    def record(self, missing) -> np.int32:
        new = []
        with self._lock:
            for path in missing.numpy():
                path = path.decode(errors="replace")
                if path not in self._seen:
                    self._seen.add(path)
                    new.append(path)
        for path in new:
            logging.getLogger(__name__).warning(
                "%s: skipped unreadable image %s (its place in the batch is taken by another "
                "image of the same batch)",
                self.what,
                path,
            )
        return np.int32(len(new))


def _assert(condition, what: str, problem: str, names, hint: str):
    """A check whose failure `user_error` recognizes: [what: problem] [names] [(hint)]."""
    joined = tf.strings.reduce_join(names, separator=", ")
    return tf.debugging.Assert(condition, [f"{what}: {problem}", joined, f"({hint})"])


def decode_batch(examples, names, labels, image_size: int, failures: ReadFailures, *, fill):
    """(images [b', S, S, 3], labels [b']) of one batch of b examples read on demand.

    `examples` is a dataset of (slot, image [S, S, 3]) for slots 0..b-1 whose map fails on
    an unreadable example; `names` (string [b]) name the examples in messages, `labels`
    (int32 [b]) are theirs. The examples are decoded in this nested dataset, which drops the
    ones that fail, so a bad file costs the others nothing and the check costs one small
    dataset per batch. Without `failures.skip` a failure stops the run with an error naming
    the examples (`user_error` makes it one line). With it, each is recorded and its slot
    filled by a copy of a readable example of the same batch (`fill`, training: the batch
    keeps its size and every other example its place), or dropped (evaluation).
    """
    n = tf.size(names)
    slots = tf.range(n)
    empty = (tf.zeros([0], tf.int32), tf.zeros([0, image_size, image_size, 3], tf.float32))
    # An empty share (the last eval batch split over replicas) reads nothing.
    size = tf.cast(tf.maximum(n, 1), tf.int64)
    inner = examples.ignore_errors().batch(size)
    inner = inner.concatenate(tf.data.Dataset.from_tensors(empty)).take(1)
    got, images = inner.get_single_element()
    present = tf.scatter_nd(got[:, None], tf.ones_like(got), [n]) > 0
    missing = tf.boolean_mask(names, ~present)
    if not failures.skip:
        hint = "remove it or pass --skip_corrupt"
        check = _assert(tf.size(missing) == 0, failures.what, _UNREADABLE, missing, hint)
        with tf.control_dependencies([check]):
            return tf.identity(images), tf.identity(labels)
    recorded = tf.py_function(failures.record, [missing], tf.int32)
    if not fill:
        with tf.control_dependencies([recorded]):
            return tf.identity(images), tf.gather(labels, got)
    k = tf.size(got)
    check = _assert(k > 0, failures.what, _ALL_UNREADABLE, missing[:1], "remove them")
    with tf.control_dependencies([recorded, check]):
        # Slot j keeps its image, or (unreadable) takes the (j mod k)-th readable one.
        position = tf.scatter_nd(got[:, None], tf.range(k), [n])
        source = tf.where(present, position, slots % tf.maximum(k, 1))
        return tf.gather(images, source), tf.gather(labels, tf.gather(got, source))
