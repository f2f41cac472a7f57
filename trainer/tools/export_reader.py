"""A run's export read and checked, and images fed to it as the run's evaluation fed them.

    export = load_export(model_dir)     # model.keras + labels.json, checked against each other
    view = preprocess(contents, export.image_size, export.eval_crop, export.encoded,
                      export.preprocessing)

DIR/export/ holds model.keras (built-in Keras layers, float32 RGB pixels in [0, 255] in,
logits out) and labels.json (class names, image size, the step, how evaluation viewed
images). `trainer.tools.predict` classifies with it, `trainer.tools.evaluate` evaluates it:
both load it here, so a damaged export is the same one line in both (which file, what is wrong
with it, how to write it again), never a traceback.

Each image is fed exactly as the run's evaluation fed its images, by the same function
(`trainer.data.images.eval_view`), in the regime labels.json records ("preprocessing"):
"center_crop", the centered square of side eval_crop x the shorter side resized bilinearly,
or "resize", the whole image resized with antialiasing (e.g. a TFDS run whose fixed-size
images were held decoded, even at image_size >= 128); clipped to [0, 255]. An export written
before labels.json recorded it: center_crop at image_size >= 128 (eval_crop from
DIR/config.json, 0.875 without it), resize below 128 or for a run trained on arrays or
synthetic data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile

from trainer import config as config_lib
from trainer import layout, runtime
from trainer.errors import UserError
from trainer.run_dir import files as run_dir
from trainer.tools import paths

# From the TF-free modules, so the commands check their arguments before the slow
# TensorFlow import.
EXPORT_DIR = layout.EXPORT_DIR
CONFIG_FILE = layout.CONFIG_FILE
DECODED_PREFIXES = config_lib.DECODED_DATASET_PREFIXES
DECODED_NAMES = config_lib.DECODED_DATASET_NAMES
DEFAULT_EVAL_CROP = config_lib.Config.__dataclass_fields__["eval_crop"].default
PREPROCESSING = config_lib.EVAL_PREPROCESSING
REWRITE = "delete the export/ folder and re-run the same training command to write it again"


@dataclasses.dataclass(frozen=True)
class Export:
    """A loaded export: the Keras model and how to feed it."""

    model: object
    class_names: tuple[str, ...]
    image_size: int
    eval_crop: float = DEFAULT_EVAL_CROP  # the run's --eval_crop
    encoded: bool = True  # False: the run evaluated decoded arrays (never center-cropped)
    # labels.json's "resize" or "center_crop"; None (an older export): decided by `encoded`
    # and image_size, as evaluation decides for encoded files.
    preprocessing: str | None = None
    path: str = ""  # of model.keras
    step: int | None = None  # the global step of the weights, as labels.json records it


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, for a one-line error naming a file."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def check_keras_file(path: str) -> None:
    """Checks that `path` is a whole .keras file (a zip archive), without reading it all.

    Keras reports an empty or cut-off file as "File not found"; this names what is wrong.

    Raises:
        UserError: The file is empty, a zip archive without its end (truncated), or no zip
            archive at all.
    """
    if not run_dir.is_local(path):
        return  # Keras' own error, in one line, when it does not load
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
        whole = zipfile.is_zipfile(path)
    except OSError as e:
        raise UserError(f"{path}: unreadable ({one_line(e)}); {REWRITE}") from None
    if size == 0:
        raise UserError(f"{path}: empty (0 bytes), not a Keras file; {REWRITE}")
    if not whole:
        what = (
            f"truncated ({size} bytes: a zip archive without its end)"
            if head == b"PK\x03\x04"
            else f"not a Keras file ({size} bytes, no zip archive)"
        )
        raise UserError(f"{path}: {what}; {REWRITE}")


def read_labels(model_dir: str) -> dict:
    """export/labels.json of `model_dir`, checked; also checks that model.keras is whole.

    Raises:
        UserError: no model_dir, no export (training has not finished), an incomplete
            export, a damaged model.keras (see `check_keras_file`) or an unreadable
            labels.json; the message names the file and the remedy.
    """
    model_dir = os.fspath(model_dir)
    if not paths.isdir(model_dir):
        raise UserError(f"model_dir {model_dir}: no such directory")
    export_dir = os.path.join(model_dir, EXPORT_DIR)
    model_path = os.path.join(export_dir, layout.EXPORT_MODEL)
    labels_path = os.path.join(export_dir, layout.LABELS_FILE)
    if not paths.isdir(export_dir):
        raise UserError(
            f"{model_path}: no export; run training first (python3 run_train.py "
            f"--model_dir={model_dir} ...), which writes it when it finishes"
        )
    for path in (model_path, labels_path):
        if not paths.exists(path) or paths.isdir(path):
            raise UserError(
                f"{path}: missing, the export is incomplete; re-running the same training "
                "command writes it"
            )
    try:
        labels = json.loads(paths.read_text(labels_path))
        names, size = labels["class_names"], labels["image_size"]
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise ValueError(f"class_names={names!r} is not a non-empty list of strings")
        if not (isinstance(size, int) and size >= 1):
            raise ValueError(f"image_size={size!r} is not an integer >= 1")
        regime = labels.get("preprocessing")
        if regime is not None and regime not in PREPROCESSING:
            raise ValueError(f"preprocessing={regime!r} is not one of {', '.join(PREPROCESSING)}")
        if "eval_crop" in labels:
            _check_crop(labels["eval_crop"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{labels_path}: unreadable ({one_line(e)}); {REWRITE}") from None
    check_keras_file(model_path)
    return labels


def read_eval_view(model_dir: str) -> tuple[float, bool]:
    """(eval_crop, encoded) of the run's evaluation view, from model_dir/config.json.

    Without config.json (an export copied alone): the defaults, (0.875, True).

    Raises:
        UserError: config.json unreadable, or its eval_crop not in (0, 1].
    """
    path = os.path.join(os.fspath(model_dir), CONFIG_FILE)
    if not paths.exists(path) or paths.isdir(path):
        return DEFAULT_EVAL_CROP, True
    try:
        full = json.loads(paths.read_text(path)).get("full", {})
        crop = full.get("eval_crop", DEFAULT_EVAL_CROP)
        dataset = str(full.get("dataset", ""))
        _check_crop(crop)
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: unreadable ({one_line(e)})") from None
    return float(crop), evaluates_encoded(dataset)


def _check_crop(crop) -> None:
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0 < crop <= 1:
        raise ValueError(f"eval_crop={crop!r} is not in (0, 1]")


def evaluates_encoded(dataset: str) -> bool:
    """Whether a run on `dataset` (--dataset) evaluated encoded images, not decoded arrays."""
    return not (dataset.startswith(DECODED_PREFIXES) or dataset in DECODED_NAMES)


def load_export(model_dir: str) -> Export:
    """Loads export/model.keras with plain Keras and export/labels.json, and checks they fit.

    Raises:
        UserError: see `read_labels`; also a model.keras that does not load (e.g. garbage
            weights inside a whole archive) or whose input size or number of outputs
            disagrees with labels.json.
    """
    labels = read_labels(model_dir)
    eval_crop, encoded = read_eval_view(model_dir)
    # labels.json records how evaluation viewed images (exports since it does): it decides.
    preprocessing = labels.get("preprocessing")
    eval_crop = float(labels.get("eval_crop", eval_crop))
    model_path = os.path.join(os.fspath(model_dir), EXPORT_DIR, layout.EXPORT_MODEL)
    runtime.import_tensorflow()
    import keras

    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as e:  # a damaged zip, a missing layer class, a truncated weights file...
        raise UserError(f"{model_path}: cannot load ({one_line(e)}); {REWRITE}") from None
    names, size = tuple(labels["class_names"]), labels["image_size"]
    input_shape = tuple(getattr(model, "input_shape", None) or ())
    output_shape = tuple(getattr(model, "output_shape", None) or ())
    if len(input_shape) == 4 and None not in input_shape[1:3] and input_shape[1:3] != (size,) * 2:
        raise UserError(
            f"{model_path}: takes {input_shape[1]}x{input_shape[2]} images but labels.json "
            f"says image_size={size}; {REWRITE}"
        )
    if output_shape and output_shape[-1] not in (None, len(names)):
        raise UserError(
            f"{model_path}: outputs {output_shape[-1]} classes but labels.json names "
            f"{len(names)}; {REWRITE}"
        )
    step = labels.get("step")
    step = step if isinstance(step, int) and not isinstance(step, bool) else None
    return Export(model, names, size, eval_crop, encoded, preprocessing, model_path, step)


def preprocess(
    contents,
    image_size: int,
    eval_crop=DEFAULT_EVAL_CROP,
    encoded: bool = True,
    preprocessing: str | None = None,
):
    """Encoded image bytes -> float32 [S, S, 3] RGB in [0, 255], as training evaluates.

    `trainer.data.images.eval_view`, the function of the evaluation pipeline (the first frame
    of an animated GIF; any input size): `preprocessing` ("resize" or "center_crop") as
    labels.json records it; without it `encoded` (False for a run trained on decoded arrays)
    and image_size decide, as for encoded files.
    """
    runtime.import_tensorflow()
    from trainer.data import images

    return images.eval_view(contents, image_size, eval_crop, encoded, preprocessing)
