"""Classify images with a trained run's export: the top-k classes and probabilities per image.

    python3 -m trainer.predict --model_dir=DIR [--top_k=5] [--batch_size=64] \\
        [--output=preds.csv] [--skip_corrupt] IMAGE_OR_FOLDER...

DIR is a `run_train.py --model_dir`; its export/ holds model.keras and labels.json, read and
checked by `trainer.tools.export_reader`, which also feeds each image exactly as the run's
evaluation fed its images (see there). Folders are searched recursively for .jpg .jpeg .png
.bmp .gif files (any case), in sorted order. One line per image: the path, then the top-k
class names with their probabilities (softmax of the logits). `--output` also writes them as
CSV: path, class_1, prob_1, ..., class_k, prob_k (most probable first).

Exit codes: 0 done; 2 bad input (one line on stderr naming the flag, file or value: a missing
path or export, a damaged export, an unreadable image without --skip_corrupt, an --output
that cannot be written, checked before predicting).

Library use: `predict(model_dir, paths, top_k=5)` returns [(path, [(class, prob), ...])].
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable, Sequence

from trainer import config as config_lib
from trainer import runtime
from trainer.errors import UserError
from trainer.run_dir import files as run_dir
from trainer.tools import cli
from trainer.tools.export_reader import Export, load_export, preprocess
from trainer.tools.paths import check_output_file

MAX_BATCH_SIZE = config_lib.MAX_GLOBAL_BATCH
IMAGE_EXTENSIONS = config_lib.IMAGE_EXTENSIONS


def find_images(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Image files named by `paths`, in order; each folder searched recursively, sorted.

    Raises:
        UserError: a path that does not exist, a file without an image extension, or no
            image at all.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = [
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if name.lower().endswith(IMAGE_EXTENSIONS)
            ]
            files.extend(sorted(found))
        elif os.path.exists(path):
            if not path.lower().endswith(IMAGE_EXTENSIONS):
                raise UserError(
                    f"{path}: not an image file (expected {' '.join(IMAGE_EXTENSIONS)}, any case)"
                )
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or directory")
    if not files:
        raise UserError(
            f"no images ({' '.join(IMAGE_EXTENSIONS)}) found in {' '.join(paths) or '(nothing)'}"
        )
    return files


def _dataset(files: list[str], export: Export, batch_size: int):
    """(index, image) batches in file order; files that fail to read or decode are dropped."""
    tf = runtime.import_tensorflow()
    index = tf.range(len(files), dtype=tf.int64)
    # Bytes, not str: a Linux file name need not be valid UTF-8.
    names = tf.constant([os.fsencode(f) for f in files], tf.string)

    def load(i, name):
        contents = tf.io.read_file(name)
        view = preprocess(
            contents, export.image_size, export.eval_crop, export.encoded, export.preprocessing
        )
        return i, view

    ds = tf.data.Dataset.from_tensor_slices((index, names))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # A dropped file shows as a gap in the indices; the caller names it or skips it.
    ds = ds.ignore_errors(log_warning=False)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _classify(export: Export, k: int):
    """A compiled function: images [B, S, S, 3] -> (top-k probabilities, top-k class ids)."""
    tf = runtime.import_tensorflow()
    size = export.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def classify(images):
        logits = tf.cast(export.model(images, training=False), tf.float32)
        return tf.math.top_k(tf.nn.softmax(logits, axis=-1), k=k)

    return classify


def _check_counts(top_k, batch_size) -> None:
    for name, value, upper in (("top_k", top_k, None), ("batch_size", batch_size, MAX_BATCH_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name}={value!r} must be an integer >= 1")
        if upper is not None and value > upper:
            raise UserError(f"{name}={value} must be <= {upper}")


def predict(
    model_dir: str | os.PathLike,
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    top_k: int = 5,
    batch_size: int = 64,
    skip_corrupt: bool = False,
    on_skip: Callable[[str], None] | None = None,
) -> list[tuple[str, list[tuple[str, float]]]]:
    """Classifies images with the export of a training run.

    Files are read and decoded in a parallel tf.data pipeline and classified a batch at a
    time. Whatever libjpeg and the decoders print about bad files is kept off stderr.

    Args:
        model_dir: The training run's --model_dir (holding export/).
        paths: Image files and folders (searched recursively, sorted); see `find_images`.
        top_k: Classes per image, most probable first; capped at the number of classes.
        batch_size: Images per model call.
        skip_corrupt: Leave out files that cannot be read or decoded instead of raising.
        on_skip: Called with the path of each file left out by `skip_corrupt`.

    Returns:
        [(path, [(class_name, probability), ...]), ...] in the order of `find_images`;
        probabilities are the softmax of the model's logits.

    Raises:
        UserError (a ValueError): bad arguments, a missing path or export, no images, or an
            unreadable image (without `skip_corrupt`), naming the file.
    """
    _check_counts(top_k, batch_size)
    files = find_images(paths)
    export = load_export(model_dir)  # checks the files before the slow TensorFlow import
    k = min(top_k, len(export.class_names))
    dropped: list[str] = []
    try:
        with runtime.captured_stderr(drop=True) as dropped:
            results, skipped = _run(export, files, k, batch_size, skip_corrupt)
    except UserError:
        raise
    except BaseException:
        # Not a bad file: whatever native code printed may explain the failure.
        sys.stderr.write("".join(f"{line}\n" for line in dropped))
        raise
    if on_skip is not None:
        for path in skipped:
            on_skip(path)
    if not results:
        raise UserError(f"no readable images among {len(files)} files, e.g. {skipped[0]}")
    return results


def _run(export: Export, files: list[str], k: int, batch_size: int, skip_corrupt: bool):
    """(results, skipped paths); raises on the first unreadable file unless `skip_corrupt`."""
    classify = _classify(export, k)
    names = export.class_names
    results, skipped = [], []
    expected = 0  # the index of the next file; a larger index means files were dropped
    iterator = iter(_dataset(files, export, batch_size))
    try:
        for index, images in iterator:
            index = index.numpy().tolist()
            for i in index:
                skipped += _dropped(files, expected, i, skip_corrupt)
                expected = i + 1
            probs, classes = classify(images)
            for i, p, c in zip(index, probs.numpy().tolist(), classes.numpy().tolist()):
                results.append((files[i], [(names[j], q) for j, q in zip(c, p)]))
        skipped += _dropped(files, expected, len(files), skip_corrupt)
    finally:
        # Stops the pipeline's decoding threads while stderr is still captured.
        del iterator
    return results, skipped


def _dropped(files: list[str], start: int, stop: int, skip_corrupt: bool) -> list[str]:
    """files[start:stop], which the pipeline dropped as unreadable; raises unless skipping."""
    if start < stop and not skip_corrupt:
        raise UserError(
            f"{files[start]}: cannot read or decode the image (remove it or pass --skip_corrupt)"
        )
    return files[start:stop]


def format_lines(results: Sequence[tuple[str, Sequence[tuple[str, float]]]]) -> list[str]:
    """One aligned line per image: `path  class prob  class prob ...` (probabilities .3f)."""
    if not results:
        return []
    path_width = max(len(path) for path, _ in results)
    name_width = max(len(name) for _, top in results for name, _ in top)
    return [
        f"{path:<{path_width}}  "
        + "  ".join(f"{name:<{name_width}} {prob:.3f}" for name, prob in top)
        for path, top in results
    ]


def write_csv(path: str, results: Sequence[tuple[str, Sequence[tuple[str, float]]]]) -> None:
    """Writes the results as CSV, atomically (temporary file, rename).

    Columns: path, then class_1, prob_1, ..., class_k, prob_k, most probable first (k: the
    longest top-k list; shorter rows end early).
    """
    k = max((len(top) for _, top in results), default=0)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "prob")])
    for image, top in results:
        writer.writerow([image] + [cell for name, prob in top for cell in (name, f"{prob:.6f}")])
    run_dir.write_text(path, text.getvalue())


# Command line ------------------------------------------------------------------------------


def define_flags(fv) -> None:
    """Defines the command line's flags on the absl FlagValues `fv`, each with its validator."""
    from absl import flags

    flags.DEFINE_string(
        "model_dir",
        None,
        "Training run directory (run_train.py --model_dir) whose export/ holds model.keras "
        "and labels.json.",
        flag_values=fv,
    )
    flags.mark_flag_as_required("model_dir", flag_values=fv)
    flags.DEFINE_integer(
        "top_k",
        5,
        "Classes shown per image, most probable first (capped at the number of classes).",
        flag_values=fv,
    )
    flags.register_validator(
        "top_k", lambda v: v >= 1, message="must be >= 1 (classes per image)", flag_values=fv
    )
    flags.DEFINE_integer(
        "batch_size", 64, "Images per model call (images, not bytes).", flag_values=fv
    )
    flags.register_validator(
        "batch_size",
        lambda v: 1 <= v <= MAX_BATCH_SIZE,
        message=f"must be in [1, {MAX_BATCH_SIZE}] (images per model call)",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "output",
        None,
        "Also write the predictions to this CSV file (columns path, class_1, prob_1, ..., "
        "class_k, prob_k, most probable first), atomically; checked before predicting.",
        flag_values=fv,
    )
    flags.register_validator(
        "output", lambda v: v is None or v.strip(), message="must not be empty", flag_values=fv
    )
    flags.DEFINE_bool(
        "skip_corrupt",
        False,
        "Skip images that cannot be read or decoded (reported as one line at the end) "
        "instead of stopping with an error naming the first.",
        flag_values=fv,
    )


def check_arguments(fv, paths: Sequence[str]) -> None:
    """What the command checks before TensorFlow's slow import: images given, --output
    writable (a run of minutes must not end in an error about the output file)."""
    if not paths:
        raise UserError("no images given: pass image files or folders after the flags")
    if fv.output:
        check_output_file("--output", fv.output)


def run(fv, paths: Sequence[str]) -> int:
    """The command: predicts, prints one line per image and writes --output; returns 0."""
    check_arguments(fv, paths)
    skipped: list[str] = []
    results = predict(
        fv.model_dir,
        paths,
        top_k=fv.top_k,
        batch_size=fv.batch_size,
        skip_corrupt=fv.skip_corrupt,
        on_skip=skipped.append,
    )
    if fv.output:
        try:
            write_csv(fv.output, results)
        except OSError as e:  # e.g. the directory went away while predicting
            raise UserError(f"--output={fv.output}: cannot write ({e.strerror or e})") from None
    sys.stdout.write("".join(f"{line}\n" for line in format_lines(results)))
    sys.stdout.flush()
    if skipped:
        sys.stderr.write(f"predict: skipped {len(skipped)} unreadable images, e.g. {skipped[0]}\n")
    return 0


def main(argv) -> int:
    """The command's body, after flag parsing (`trainer.tools.cli`)."""
    from absl import flags, logging

    check_arguments(flags.FLAGS, argv[1:])
    cli.start(quiet_unless_verbosity=False)
    logging.set_verbosity(logging.WARNING)
    return run(flags.FLAGS, argv[1:])


def command() -> None:
    """`python -m trainer.predict` and `lrtech predict`."""
    cli.run("predict", define_flags, main, positional=True)


if __name__ == "__main__":
    command()
