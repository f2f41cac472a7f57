"""Per-image ops of the pipelines: decode, resize, augment, and the full-resolution path.

Two preprocessing regimes, chosen per split by `full_resolution`:

* Small fixed-size data (arrays, synthetic, CIFAR-sized TFDS, folders below
  `FULL_RESOLUTION_MIN` px): the whole image is decoded and resized (antialiased) to
  --image_size; training adds zero-pad-by-S/8, random crop back to S and a horizontal flip
  (`pad_crop_flip`). Evaluation is the resized image. This is the behaviour since the first
  release; results on such data do not change.
* Full resolution (encoded images, folder files or TFDS stored as JPEG/PNG, at --image_size
  >= `FULL_RESOLUTION_MIN`): training takes an Inception-style random-resized crop (area
  8%-100% of the image, aspect ratio 3/4-4/3, as TF Model Garden's ImageNet input and
  torchvision's RandomResizedCrop) and decodes only that window of a JPEG
  (`tf.image.decode_and_crop_jpeg`), then resizes it (bilinear) to S and flips it
  (`random_resized_crop`). Evaluation decodes the centered square of side
  ``eval_crop * shorter side`` and resizes it to S (`center_crop`); 0.875 is the classic
  224/256. PNG, GIF and BMP files are decoded whole and cropped the same way.

Every random choice is stateless, seeded by the example seed the pipeline derives from
(seed, epoch, position), so a batch is a pure function of (seed, step).
"""

from __future__ import annotations

import tensorflow as tf

from trainer.config import EVAL_PREPROCESSING

# --image_size from which encoded images take the full-resolution path.
FULL_RESOLUTION_MIN = 128
# Random-resized-crop window: fraction of the image area and width/height ratio.
AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
_MAX_ATTEMPTS = 10


def full_resolution(encoded: bool, image_size: int) -> bool:
    """Whether a split of encoded (or raw, `encoded`=False) images takes the full-res path."""
    return encoded and image_size >= FULL_RESOLUTION_MIN


def decode(contents) -> tf.Tensor:
    """uint8 [H, W, 3] from JPEG, PNG, GIF (first frame) or BMP bytes."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize(image, image_size: int) -> tf.Tensor:
    """float32 [S, S, 3] in [0, 255]: antialiased resize (the small-data path's)."""
    image = tf.image.resize(image, [image_size, image_size], antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def pad_crop_flip(image, seed) -> tf.Tensor:
    """Zero-pad by S/8, random crop back to S, random horizontal flip; stateless in `seed`."""
    size = image.shape[0]
    pad = max(size // 8, 1)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, [size, size, 3], seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _shape(contents) -> tf.Tensor:
    """int32 [H, W, C] of encoded bytes: from the JPEG header alone, else by decoding."""
    return tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.image.extract_jpeg_shape(contents),
        lambda: tf.shape(decode(contents)),
    )


def _decode_window(contents, window, decode_whole: bool) -> tf.Tensor:
    """uint8 [h, w, 3] of window (y, x, h, w): only that window's JPEG blocks are decoded."""

    def cropped():
        return tf.image.decode_and_crop_jpeg(contents, window, channels=3)

    def whole():
        begin = tf.stack([window[0], window[1], 0])
        return tf.slice(decode(contents), begin, tf.stack([window[2], window[3], 3]))

    if decode_whole:
        image = whole()
    else:
        image = tf.cond(tf.io.is_jpeg(contents), cropped, whole)
    image.set_shape([None, None, 3])
    return image


def _bilinear(image, image_size: int) -> tf.Tensor:
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return tf.clip_by_value(image, 0.0, 255.0)


def random_resized_crop(contents, image_size: int, seed, *, decode_whole: bool = False):
    """Training view of one encoded image: random-resized crop, resize to S, random flip.

    Args:
      contents: scalar string tensor, the encoded file.
      image_size: S.
      seed: int64 [2] stateless seed of this example.
      decode_whole: decode the whole JPEG and crop afterwards (for benchmarks: the result is
        the same window, computed the slow way).

    Returns:
      float32 [S, S, 3] in [0, 255].
    """
    box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        _shape(contents),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),  # the whole image
        seed=box_seed,
        min_object_covered=0.1,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=AREA_RANGE,
        max_attempts=_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = _bilinear(_decode_window(contents, window, decode_whole), image_size)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def center_crop(contents, image_size: int, crop: float) -> tf.Tensor:
    """Evaluation view of one encoded image: the centered square of side crop * shorter side.

    Returns:
      float32 [S, S, 3] in [0, 255].
    """
    shape = _shape(contents)
    height, width = shape[0], shape[1]
    side = tf.cast(crop * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    window = tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])
    return _bilinear(_decode_window(contents, window, False), image_size)


def eval_preprocessing(encoded: bool, image_size: int) -> str:
    """The evaluation regime of a split: "center_crop" (`center_crop`, the full-resolution
    path) or "resize" (the whole image decoded and resized). Recorded in an export's
    labels.json so that `trainer.tools.predict` feeds images the way evaluation did."""
    return "center_crop" if full_resolution(encoded, image_size) else "resize"


PREPROCESSING = EVAL_PREPROCESSING  # the values of `eval_preprocessing`


def eval_view(
    contents, image_size: int, crop: float, encoded: bool = True, preprocessing: str | None = None
) -> tf.Tensor:
    """Evaluation view of one encoded image, as `trainer.data.pipeline.eval_dataset` makes it.

    `center_crop` on the full-resolution path (`full_resolution(encoded, image_size)`), else
    the whole image decoded and resized. `encoded` is the split's: False for a TFDS split held
    decoded, whose images are small and fixed-size (see `trainer.data.sources.Split`).
    `preprocessing` ("resize" or "center_crop", see `eval_preprocessing`), when given,
    decides instead of `encoded`.

    Returns:
      float32 [S, S, 3] in [0, 255].
    """
    if preprocessing is None:
        preprocessing = eval_preprocessing(encoded, image_size)
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"preprocessing={preprocessing!r} must be one of {PREPROCESSING}")
    if preprocessing == "center_crop":
        return center_crop(contents, image_size, crop)
    return resize(decode(contents), image_size)
