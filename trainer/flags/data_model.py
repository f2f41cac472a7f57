"""Flags of the data, the model and the run's length."""

from __future__ import annotations

import math

from absl import flags

from trainer import config as config_lib
from trainer.config import MAX_GLOBAL_BATCH, MAX_IMAGE_SIZE, MAX_SYNTHETIC
from trainer.flags.validators import _default, _positive, _register


def _define_data(fv):
    flags.DEFINE_string(
        "dataset",
        _default("dataset"),
        "What to train on: a TFDS image-classification name (cifar10, cifar100, "
        "oxford_flowers102, ...), folder:PATH (PATH/train/<label>/*.jpg and PATH/test/...), "
        "npz:PATH (a NumPy .npz with uint8 images x_train, x_test [N,H,W] or [N,H,W,1|3], "
        "integer labels y_train, y_test [N], optional class_names), idx:DIR (MNIST-style "
        "train-/t10k-images-idx3-ubyte and -labels-idx1-ubyte files, .gz or not, optional "
        "DIR/class_names.txt; e.g. /usr/share/datasets/fashion-mnist from Debian's "
        "dataset-fashion-mnist), sklearn_digits (scikit-learn's 1,797 8x8 digit scans, a "
        "fixed stratified 80/20 split; needs scikit-learn), or synthetic[:NUM_CLASSES] "
        "(generated offline, 32x32x3; for quickstart and tests). Images are resized to "
        "--image_size.",
        flag_values=fv,
    )
    _register(fv, "dataset", lambda v: bool(v.strip()), "a non-empty dataset spec")
    flags.DEFINE_string(
        "data_dir", _default("data_dir"), "TFDS data directory (prepared datasets).", flag_values=fv
    )
    flags.DEFINE_string(
        "train_split",
        _default("train_split"),
        "Split to train on (TFDS split, folder subdirectory, npz x_NAME/y_NAME, IDX file prefix).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "eval_split",
        _default("eval_split"),
        "Split to evaluate on (as --train_split; IDX: test also finds t10k).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "skip_corrupt",
        _default("skip_corrupt"),
        "folder: datasets: skip (and count) unreadable images instead of failing.",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "augment",
        _default("augment"),
        "Pad-and-random-crop plus horizontal flip on training images (random-resized crops "
        "plus flip at --image_size >= 128). On by default, which suits photos (objects, "
        "animals, clothing); turn it off (--noaugment) for images a flip changes the meaning "
        "of: digits, text, charts, road signs.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "cache",
        _default("cache"),
        ["auto", "memory", "none"],
        "Where images live: memory (a split is read into memory at start-up: decoded, or "
        "encoded bytes when shapes vary), none (folder: only the sorted file list is kept and "
        "each image is read when its step needs it), or auto (folder: memory when a split's "
        "decoded pixels fit 1 GiB, else none). TFDS datasets load into memory (auto or "
        "memory); arrays (npz:, idx:, sklearn_digits) and synthetic data are always in "
        "memory. Batches are the same either way. See docs/DATA.md.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "eval_crop",
        _default("eval_crop"),
        "Full-resolution path only (encoded images at --image_size >= 128): evaluation "
        "decodes the centered square of this fraction of the shorter side and resizes it to "
        "--image_size (0.875: 224 of 256). In (0, 1]. Small fixed-size data is resized whole.",
        flag_values=fv,
    )
    _register(fv, "eval_crop", lambda v: math.isfinite(v) and 0 < v <= 1, "in (0, 1]")
    flags.DEFINE_integer(
        "synthetic_train_size",
        _default("synthetic_train_size"),
        "Examples in the synthetic train split (at most 1,000,000: 3 GiB of 32x32 images).",
        lower_bound=1,
        upper_bound=MAX_SYNTHETIC,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "synthetic_test_size",
        _default("synthetic_test_size"),
        "Examples in the synthetic test split (at most 1,000,000).",
        lower_bound=1,
        upper_bound=MAX_SYNTHETIC,
        flag_values=fv,
    )


def _define_model(fv):
    flags.DEFINE_string(
        "model",
        _default("model"),
        "The model: a name of models/ (resnet20, resnet50, convnext_tiny, efficientnetv2_b0, "
        "...; --helpfull lists them under models), PATH.keras (a whole saved Keras model: "
        "its own weights, its input size) or package.module:function (a builder "
        "function(num_classes, image_size) -> keras.Model importable from PYTHONPATH).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "new_head",
        _default("new_head"),
        "--model=PATH.keras or module:function: replace the last Dense classifier with a fresh "
        "--num_classes head (default: when the model's output width differs).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "custom_objects",
        _default("custom_objects"),
        "--model=PATH.keras: Python module(s), comma-separated, defining the model's custom "
        "layers; imported before loading.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "input_scale",
        _default("input_scale"),
        config_lib.INPUT_SCALES,
        "--model=PATH.keras or module:function: what the model expects of the pipeline's "
        "float [0, 255] RGB pixels: raw (as they are, the default), unit ([0, 1]), "
        "minus_one_one ([-1, 1]), imagenet_caffe (BGR minus ImageNet means), imagenet_torch "
        "([0, 1] standardized by ImageNet mean/std). Added as a built-in Keras layer and "
        "recorded in labels.json, so exports and predict match.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "weights",
        _default("weights"),
        "Initial weights: imagenet (keras.applications backbones; needs internet once), none, "
        "pretrained:NAME (shipped in models/pretrained/, e.g. pretrained:resnet20_fashion_mnist "
        "for --model=resnet20), or PATH to a .weights.h5/.keras file of the same architecture "
        "(head is skipped).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "head",
        _default("head"),
        "Classification head: default, or article (GAP-256-128-N).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "image_size",
        _default("image_size"),
        "Input size in pixels (square, 8..1024); images are resized to it. Default: 32 for "
        "the named models, a saved model's own input size for --model=PATH.keras. Each "
        "model has a minimum (e.g. xception 71, inception_v3 75).",
        lower_bound=8,
        upper_bound=MAX_IMAGE_SIZE,
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "num_classes",
        _default("num_classes"),
        "Number of classes (inferred from the dataset when unset).",
        lower_bound=2,
        flag_values=fv,
    )


def _define_length(fv):
    flags.DEFINE_integer(
        "global_batch_size",
        _default("global_batch_size"),
        "Examples per step, summed over all replicas.",
        lower_bound=1,
        upper_bound=MAX_GLOBAL_BATCH,
        flag_values=fv,
    )
    flags.DEFINE_float(
        "epochs",
        _default("epochs"),
        "Training length in epochs (or --train_steps).",
        flag_values=fv,
    )
    _register(fv, "epochs", _positive, "a positive number of epochs")
    flags.DEFINE_integer(
        "train_steps",
        _default("train_steps"),
        "Training length in steps (or --epochs).",
        lower_bound=1,
        flag_values=fv,
    )
