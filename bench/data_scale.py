"""Benchmark 9: data of any size (folders read on demand, full-resolution JPEG input).

Two parts, both in BENCHMARKS.md section 9:

* Start-up and memory vs dataset size: generated JPEG folders of 2k, 20k and 200k images
  (64x64, the content does not matter here), one child process per run (`bench/child.py`)
  training resnet8 at 32 px for a few steps with --cache=none (file list only, read on demand)
  and --cache=memory (every file read at start-up, the only behaviour before). Reports time
  from launch to the end of the first step, peak RSS (VmHWM) and the steady images/s.
* The full-resolution input pipeline alone at 224 px with augmentation (random-resized crop
  + flip), images/s on ONE core (tf.data private thread pool of 1, one parallel call):
  `tf.image.decode_and_crop_jpeg` (only the crop's blocks decoded) vs decoding the whole
  JPEG and cropping, on generated 500x375 photo-like JPEGs; and the trainer's own pipeline
  (`Data.train_dataset`, --cache=none) on every core.

    python3 bench/run_all.py --only=data
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from bench import workloads
from bench.common import Section, Stats, fmt, spread, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# DeepLearningExamples' ResNet50 v1.5 TF2 AMP training on one A100 80GB: ~2,400 images/s.
GPU_IMAGES_PER_SEC = 2400
_DISTINCT = 256  # distinct encoded images a generated folder cycles through


def write_jpeg_folder(root: str, examples: int, size: int, num_classes: int = 10) -> str:
    """root/{train,test}/class_KK/NNNNNNN.jpg: `examples` train files (test: 1/16), quickly.

    The bytes cycle through `_DISTINCT` random JPEGs: start-up and memory depend on the
    number and size of files, not on their content.
    """
    rng = np.random.default_rng(0)
    blobs = [
        tf.io.encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), quality=90).numpy()
        for _ in range(_DISTINCT)
    ]
    for split, n in (("train", examples), ("test", max(examples // 16, num_classes))):
        for k in range(num_classes):
            os.makedirs(os.path.join(root, split, f"class_{k:02d}"), exist_ok=True)
        for i in range(n):
            path = os.path.join(root, split, f"class_{i % num_classes:02d}", f"{i:07d}.jpg")
            with open(path, "wb") as f:
                f.write(blobs[i % _DISTINCT])
    return root


def write_photo_folder(root: str, examples: int, num_classes: int = 10) -> str:
    """root/train/class_KK/*.jpg: 500x375 photo-like JPEGs (smooth shapes plus grain, about
    ImageNet's typical size and entropy), for decode benchmarks."""
    rng = np.random.default_rng(1)
    for i in range(examples):
        coarse = rng.uniform(0, 255, (1, 12, 16, 3)).astype(np.float32)
        image = tf.image.resize(coarse, [375, 500], method="bicubic")[0]
        image = image + rng.normal(0, 6, (375, 500, 3)).astype(np.float32)
        pixels = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        folder = os.path.join(root, "train", f"class_{i % num_classes:02d}")
        os.makedirs(folder, exist_ok=True)
        jpeg = tf.io.encode_jpeg(pixels, quality=90)
        tf.io.write_file(os.path.join(folder, f"{i:06d}.jpg"), jpeg)
    os.makedirs(os.path.join(root, "test", "class_00"), exist_ok=True)
    first = os.path.join(root, "train", "class_00", "000000.jpg")
    shutil.copy(first, os.path.join(root, "test", "class_00"))
    return root


def _child(folder: str, cache: str, batch: int, steps: int) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "bench", "child.py"), "trainer", "resnet8"]
    cmd += [str(batch), str(steps), repr(time.time()), f"folder:{folder}", cache, "32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {cmd} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["images_per_sec"] = (steps - 1) * batch / result["train_sec"]
    return result


def _scale_part(sizes, reps, batch, steps, log):
    """{(size, cache): [child results]} for every size and cache, alternating caches."""
    results = {}
    for size in sizes:
        folder = workloads.tmpdir(f"folder{size}")
        t0 = time.time()
        write_jpeg_folder(folder, size, 64)
        log(f"  wrote {size} JPEG files in {time.time() - t0:.0f} s")
        try:
            for rep in range(reps):
                caches = ("none", "memory") if rep % 2 == 0 else ("memory", "none")
                for cache in caches:
                    r = _child(folder, cache, batch, steps)
                    results.setdefault((size, cache), []).append(r)
                    log(
                        f"  {size} {cache}: first step {r['first_step_sec']:.1f} s, "
                        f"peak {r['peak_rss_mib']:.0f} MiB, {r['images_per_sec']:.0f} img/s"
                    )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return results


def _per_core_rate(files, decode_whole: bool, batches: int, batch: int, threads: int):
    """(images, seconds) of read + random-resized crop (224) + flip + batch on `threads` threads."""
    from trainer.data import images as image_ops

    paths = tf.constant(files)
    n = len(files)

    def example(i):
        seed = tf.stack([tf.constant(7, tf.int64), i])
        contents = tf.io.read_file(paths[i % n])
        return image_ops.random_resized_crop(contents, 224, seed, decode_whole=decode_whole)

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    ds = tf.data.Dataset.range((batches + 1) * batch).map(example, num_parallel_calls=threads)
    return _timed(ds.batch(batch).with_options(options), batches, batch)


def _timed(dataset, batches: int, batch: int):
    """(images, seconds) of `batches` batches, after a first untimed one (function set-up)."""
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch, time.perf_counter() - start


def _trainer_pipeline_rate(folder: str, batch: int, batches: int):
    """(images, seconds) pulling the trainer's own training pipeline, built before timing."""
    from trainer import data

    config = workloads.make_config(
        "resnet8", batch, 0, dataset=f"folder:{folder}", cache="none", image_size=224, augment=True
    )
    return _timed(data.load(config).train_dataset(batch), batches, batch)


def _decode_part(scale, log):
    folder = workloads.tmpdir("photos")
    write_photo_folder(folder, 256)
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(os.path.join(folder, "train")) for f in fs
    )
    mean_kb = np.mean([os.path.getsize(f) for f in files]) / 1024
    batches, batch = (4, 32) if scale.name == "quick" else (16, 64)
    try:
        cmp = scale.compare(
            {
                "whole": lambda: _per_core_rate(files, True, batches, batch, 1),
                "crop": lambda: _per_core_rate(files, False, batches, batch, 1),
                "trainer": lambda: _trainer_pipeline_rate(folder, batch, batches),
            },
            log,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return cmp, mean_kb


def data_scale(scale, log) -> Section:
    quick = scale.name == "quick"
    sizes = (500, 2_000, 5_000) if quick else (2_000, 20_000, 200_000)
    reps, batch, steps = (1, 32, 4) if quick else (2, 64, 12)
    results = _scale_part(sizes, reps, batch, steps, log)
    cmp, mean_kb = _decode_part(scale, log)

    def stat(size, cache, key):
        return Stats([r[key] for r in results[(size, cache)]])

    rows = []
    for size in sizes:
        for cache in ("none", "memory"):
            rows.append(
                [
                    f"{size:,}",
                    cache,
                    spread(stat(size, cache, "first_step_sec"), 3),
                    spread(stat(size, cache, "peak_rss_mib"), 4),
                    spread(stat(size, cache, "images_per_sec"), 3),
                ]
            )
    small, large = sizes[0], sizes[-1]
    growth = {
        key: stat(large, "none", key).median / stat(small, "none", key).median
        for key in ("first_step_sec", "peak_rss_mib")
    }
    old_growth = {
        key: stat(large, "memory", key).median / stat(small, "memory", key).median
        for key in ("first_step_sec", "peak_rss_mib")
    }
    steady = (
        stat(small, "none", "images_per_sec").median
        / stat(small, "memory", "images_per_sec").median
    )
    crop, whole = cmp.stats["crop"].median, cmp.stats["whole"].median
    cores = GPU_IMAGES_PER_SEC / crop
    body = (
        "**Start-up, memory and speed vs folder size** (resnet8 at 32 px, global batch "
        f"{batch}, {steps} steps, one child process per run; {reps} runs each, median (min-max))"
        "\n\n"
        + table(
            ["train images", "--cache", "s to first step", "peak RSS MiB", "steady images/s"],
            rows,
        )
        + f"\n\n**Full-resolution input alone** (224 px random-resized crop + flip, "
        f"generated 500x375 JPEGs of {mean_kb:.0f} KiB on average, batch {batch})\n\n"
        + table(
            ["pipeline", "images/s, median (min-max)", "ratio to whole decode"],
            [
                ["decode whole JPEG, then crop (1 core)", spread(cmp.stats["whole"]), "1"],
                [
                    "`decode_and_crop_jpeg` (1 core)",
                    spread(cmp.stats["crop"]),
                    spread(cmp.ratio("crop")),
                ],
                [
                    f"trainer's `Data.train_dataset`, --cache=none ({os.cpu_count()} cores)",
                    spread(cmp.stats["trainer"]),
                    spread(cmp.ratio("trainer")),
                ],
            ],
        )
    )
    setup = (
        "Generated JPEG folders (64x64 images for the size sweep; the files' number matters, "
        "not their content), on this machine's disk, page cache warm after writing. "
        "`--cache=none` keeps only the sorted file list and reads each image when its step "
        "needs it; `--cache=memory` reads every file at start-up (the behaviour before). "
        "The second table pulls the input pipeline alone, as fast as it goes; the 1-core rows "
        "use a tf.data private thread pool of one thread."
    )
    meaning = (
        f"From {small:,} to {large:,} images, --cache=none's time to the first step grows "
        f"{fmt(growth['first_step_sec'])}x and its peak RSS {fmt(growth['peak_rss_mib'])}x "
        f"(reading everything at start-up: {fmt(old_growth['first_step_sec'])}x and "
        f"{fmt(old_growth['peak_rss_mib'])}x). Steady training on the files read on demand "
        f"runs at {fmt(steady)}x the in-memory rate at {small:,} images. "
        f"`decode_and_crop_jpeg` makes {fmt(crop)} training views per second per core, "
        f"{fmt(cmp.ratio('crop').median)}x decoding whole images (paired median); "
        "one A100 training ResNet-50 with AMP "
        f"(DeepLearningExamples: about {GPU_IMAGES_PER_SEC:,} images/s) needs "
        f"{GPU_IMAGES_PER_SEC:,} / {fmt(crop)} = {cores:.0f} cores of this CPU for its input "
        f"alone ({GPU_IMAGES_PER_SEC / whole:.0f} when decoding whole JPEGs)."
    )
    goals = [
        (
            f"{large:,} images within 1.3x of {small:,} for start-up "
            f"({fmt(growth['first_step_sec'])}x) and peak RSS ({fmt(growth['peak_rss_mib'])}x)",
            growth["first_step_sec"] <= 1.3 and growth["peak_rss_mib"] <= 1.3,
        ),
    ]
    return Section(
        title="9. Data of any size: folders read on demand, full-resolution JPEG input",
        command=scale.cmd("data"),
        setup=setup,
        body=body,
        meaning=meaning,
        goals=goals,
    )
