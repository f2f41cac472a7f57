"""export/: the trained model as plain Keras, written atomically.

    export_dir = export.write(model_dir, [("", model, {}), ("swa", swa_model, {...})],
                              labels=labels_record, step=step, interrupted=...)

Each model goes to export/<subdir>/ as model.keras, model.weights.h5, saved_model/ and
labels.json. The model is converted to built-in Keras layers (`models.portable`) first, so
model.keras loads with plain `keras.saving.load_model`. Everything is written into a
temporary directory renamed into place at the end: export/ is complete or absent (or the
previous one). A signal between two files stops with `Preempted`; the next run writes it again.
"""

from __future__ import annotations

import json
import os
import shutil

from absl import logging

from trainer import layout
from trainer.errors import Preempted
from trainer.run_dir import checkpoints, faults
from trainer.run_dir import files as run_dir


def labels_record(config, class_names, step: int, preprocessing: str | None) -> dict:
    """labels.json: what a user of the export needs beside the weights.

    The class of each output, and how evaluation fed images to the model (`trainer.data`),
    which `trainer.tools.predict` follows: "preprocessing" is "resize" (the whole image
    resized with antialiasing to image_size x image_size) or "center_crop" (the centered
    square of side eval_crop x the shorter side, resized bilinearly); float32 RGB pixels in
    [0, 255] either way. `preprocessing` None (unknown, e.g. a test's own data) leaves the
    key out.
    """
    size, crop = config.input_size, config.eval_crop
    if preprocessing == "center_crop":
        view = (
            f"the centered square of side {crop:g} x the shorter side, resized (bilinear) "
            "to image_size x image_size"
        )
    else:
        view = "the whole image resized (bilinear, antialiased) to image_size x image_size"
    record = {
        "class_names": list(class_names),
        "image_size": size,
        "input": f"float32 RGB pixels in [0, 255]: {view}",
        "dataset": config.dataset,
        "step": step,
        # A model's own input scaling is a built-in layer inside model.keras (models.adapt):
        # predict feeds [0, 255] either way; recorded so a reader knows what the model does.
        "input_scale": config.input_scale,
    }
    if preprocessing is not None:
        record.update(preprocessing=preprocessing, eval_crop=crop)
    return record


def is_complete(model_dir: str, subdirs=()) -> bool:
    """Whether export/ (and export/<subdir>/ of each averaged model) holds every file."""
    directory = os.path.join(model_dir, layout.EXPORT_DIR)
    return all(
        os.path.exists(os.path.join(directory, d, f))
        for d in ("", *subdirs)
        for f in layout.EXPORT_FILES
    )


def _writes(model, directory: str, labels: dict):
    import models

    model.trainable = True  # the exported model is not frozen
    portable = models.portable(model)
    os.makedirs(directory, exist_ok=True)
    # The model is never compiled, so model.keras carries no (segmented) optimizer.
    return (
        lambda: run_dir.write_text(
            os.path.join(directory, layout.LABELS_FILE), json.dumps(labels, indent=2)
        ),
        lambda: portable.save(os.path.join(directory, layout.EXPORT_MODEL)),
        lambda: portable.save_weights(os.path.join(directory, layout.EXPORT_WEIGHTS)),
        lambda: portable.export(os.path.join(directory, layout.EXPORT_SAVED_MODEL), verbose=False),
    )


def write(model_dir: str, targets, *, labels: dict, step: int, interrupted=None) -> str:
    """Writes export/ atomically; returns its path.

    Args:
        model_dir: The run directory.
        targets: (subdir, model, labels.json additions) of each model: "" for the run's
            model, "swa" / "ema" for averaged ones.
        labels: The labels.json record (`labels_record`) shared by every model.
        step: The global step the weights are from (for messages).
        interrupted: `() -> signal number or None`, asked after every file.

    Raises:
        NonFiniteError: A weight is NaN or inf (nothing is written).
        Preempted: A signal arrived; the previous export (or none) is left.
    """
    directory = os.path.join(model_dir, layout.EXPORT_DIR)
    for _, model, _ in targets:
        checkpoints.check_finite_weights(model, step)
    run_dir.remove_stale_temporaries(model_dir, layout.EXPORT_DIR)
    tmp = f"{directory}.tmp-{os.getpid()}"
    try:
        for subdir, model, extra in targets:
            for write_one in _writes(model, os.path.join(tmp, subdir), {**labels, **extra}):
                write_one()
                faults.point("export")
                signal = interrupted() if interrupted is not None else None
                if signal is not None:
                    raise Preempted(
                        f"signal {signal} during the export: the checkpoint at step {step} is "
                        "kept; run the same command to write the export"
                    )
        run_dir.replace_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logging.info("Exported the model to %s", directory)
    return directory
