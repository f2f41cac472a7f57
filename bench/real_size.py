"""Benchmarks 11 and 12: keras.applications backbones at 224 px, and the fused BatchNorm there.

* ``size224`` (section 11): resnet50, convnext_tiny and efficientnetv2_b0 at 224x224, global
  batch 32 (`models.build(name, 10, image_size=224)`, weights=none): the trainer with its
  defaults vs Keras `model.fit` with its defaults vs the compute floor (the same model
  stepping on one fixed batch, `workloads.Floor`), float32; mixed_bfloat16 as well where the
  CPU has AMX or AVX512-BF16 (``amx_bf16`` / ``avx512_bf16`` in /proc/cpuinfo), else the
  section says it was not measured.
* ``fused_bn`` (section 12): whole training steps on the fixed batch of the model as
  `models.build` makes it (Keras' BatchNormalization layers replaced by
  `models.layers.BatchNormalization`, see `models.applications`) against the same model with
  Keras' own layer (`workloads.keras_batch_norm`), same weights, alternating; and the largest
  difference of their inference logits on the batch.

A 224 px step takes seconds on a CPU, so runs are one step (after a warm-up repetition that
pays the tracing) and the repetitions are few unless ``--reps`` is given.

    python3 bench/run_all.py --only=size224,fused_bn --out=/tmp/size224.md
"""

from __future__ import annotations

import contextlib
import gc
import os
import time

import keras
import numpy as np

import models
from bench import common, workloads
from bench.common import Section, Stats, fmt, spread, table
from trainer import data

# Steps per timed run of size224: enough for about 20 s a run, so that what each loop pays once
# per call (the trainer's first batch of a fresh call, fit's epoch set-up) weighs a few percent
# at most; with one step per run the trainer measured 0.94x fit on resnet50 and, 3 steps a
# run, 1.04x in one process.
FULL = dict(
    models=("resnet50", "convnext_tiny", "efficientnetv2_b0"),
    size=224,
    batch=32,
    steps={"resnet50": 3, "convnext_tiny": 1, "efficientnetv2_b0": 8},
)
# The quick scale checks the code paths in minutes: one model with BatchNorm, one without.
QUICK = dict(
    models=("efficientnetv2_b0", "convnext_tiny"),
    size=64,
    batch=8,
    steps={"efficientnetv2_b0": 1, "convnext_tiny": 1},
)
SPEED_REPS = 3  # timed repetitions of size224 without --reps (each costs a minute or more)
BN_REPS = 5  # of fused_bn without --reps: its two candidates differ by less than the noise
BN_STEPS = 1  # fused_bn: both candidates are floors (no pipeline, nothing paid per call)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
GAIN = 1.05  # the fused BatchNorm is worth adopting from this step-rate ratio on


def _shape(scale) -> dict:
    return QUICK if scale.name == "quick" else FULL


def _reps(scale, default: int) -> int:
    """`--reps` when given, else at most `default`."""
    return scale.reps if scale.reps_given else min(scale.reps, default)


@contextlib.contextmanager
def _policy(name: str):
    """The global Keras dtype policy `name` inside, float32 after."""
    keras.config.set_dtype_policy("float32" if name == "none" else name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


def _bn_layers(model: keras.Model) -> int:
    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def _where(loads: list[float]) -> str:
    return (
        f"Measured on {common.machine_cpu()}, {len(os.sched_getaffinity(0))} cores, 1-minute "
        f"load average {fmt(min(loads))}-{fmt(max(loads))} during the run (the machine is "
        "shared with other jobs): compare only within this section."
    )


def _bf16_note() -> str | None:
    """None where the CPU accelerates bfloat16, else why it is not measured."""
    if common.cpu_flags() & set(BF16_FLAGS):
        return None
    return (
        "**mixed_bfloat16: not measured.** This CPU has neither "
        f"{' nor '.join(BF16_FLAGS)} in /proc/cpuinfo, so bfloat16 matmuls and convolutions "
        "would be emulated (converted to float32), not accelerated."
    )


def _precisions() -> list[str]:
    return ["none"] + ([] if _bf16_note() else ["mixed_bfloat16"])


def _label(precision: str) -> str:
    return "float32" if precision == "none" else precision


# 11. trainer vs model.fit vs the floor ------------------------------------------------------


def _speed_one(name, precision, shape, scale, log):
    size, batch, steps = shape["size"], shape["batch"], shape["steps"][name]
    config = workloads.make_config(
        name, batch, batch * steps, image_size=size, mixed_precision=precision
    )
    with _policy(precision):
        trainer = workloads.Trainer(config)
        fit = workloads.Fit(config)
        keras.utils.set_random_seed(config.seed)
        model = models.build(name, workloads.NUM_CLASSES, image_size=size)
        floor = workloads.Floor(
            model, workloads.floor_optimizer(config, model), fit.x[:batch], fit.y[:batch]
        )
        with workloads.closing(trainer, fit):
            return common.alternate(
                {
                    "fit": fit.timed_epoch,
                    "trainer": trainer.timed_epoch,
                    "floor": common.rate(lambda: floor.run(steps)),
                },
                reps=_reps(scale, SPEED_REPS),
                warmup=scale.warmup,
                log=log,
            )


def size224(scale, log) -> Section:
    shape = _shape(scale)
    size, batch = shape["size"], shape["batch"]
    loads, bodies, goals, notes = [os.getloadavg()[0]], [], [], []
    header = [
        "model",
        "model.fit images/s",
        "trainer images/s",
        "compute floor images/s",
        "trainer / fit",
        "floor / fit",
        "steps per run",
        "trainer s/step",
    ]
    for precision in _precisions():
        rows = []
        for name in shape["models"]:
            log(f"  {name}, {size} px, global batch {batch}, {_label(precision)}")
            cmp = _speed_one(name, precision, shape, scale, log)
            gc.collect()  # this model's graphs and variables before the next one's
            loads.append(os.getloadavg()[0])
            trainer = cmp.ratio("trainer").median
            rows.append(
                [
                    name,
                    spread(cmp.stats["fit"]),
                    spread(cmp.stats["trainer"]),
                    spread(cmp.stats["floor"]),
                    spread(cmp.ratio("trainer")),
                    spread(cmp.ratio("floor")),
                    str(shape["steps"][name]),
                    fmt(batch / cmp.stats["trainer"].median),
                ]
            )
            goals.append(
                (
                    f"{_label(precision)} {name} trainer >= 1.0x fit ({fmt(trainer)}x)",
                    trainer >= 1.0,
                )
            )
            notes.append(
                f"{name}: the trainer {fmt(trainer)}x model.fit, the floor "
                f"{fmt(cmp.ratio('floor').median)}x."
            )
        bodies.append(
            f"**{_label(precision)}** ({size} px, global batch {batch}; median (min-max), "
            "ratios paired per repetition)\n\n" + table(header, rows)
        )
    bodies += [n for n in [_bf16_note()] if n]
    return Section(
        title=f"11. Speed at {size} px: keras.applications backbones",
        command=scale.cmd("size224"),
        setup=(
            f"{', '.join(shape['models'])} built by `models.build(name, 10, "
            f"image_size={size})` (weights=none; BatchNorm fused, section 12), global batch "
            f"{batch}, Adam + SGDR, the synthetic in-memory set resized to {size} px. Per "
            "model one comparison alternates, in one process: model.fit with its defaults, "
            "the trainer with its defaults (`steps_per_loop=50`, its own input pipeline) and "
            "the compute floor (the same model stepping on one fixed batch held in memory: no "
            "input pipeline, no metrics, no strategy). A run is one call of each loop over "
            "the table's steps per run (about 20 s at 224 px), its per-call costs included. "
            f"{_reps(scale, SPEED_REPS)} timed repetitions after {scale.warmup} warm-up "
            f"(tracing). {_where(loads)}"
        ),
        body="\n\n".join(bodies),
        meaning=" ".join(notes),
        goals=goals,
    )


# 12. fused BatchNorm vs Keras' --------------------------------------------------------------


def _bn_one(name, precision, shape, scale, log):
    """(Comparison of the two floors, CPU seconds per step of each, logits diff, BN layers)."""
    size, batch, steps = shape["size"], shape["batch"], BN_STEPS
    config = workloads.make_config(name, batch, batch * steps, image_size=size)
    with _policy(precision):
        keras.utils.set_random_seed(config.seed)
        fused = models.build(name, workloads.NUM_CLASSES, image_size=size)
        layers = _bn_layers(fused)
        if not layers:
            return None
        plain = workloads.keras_batch_norm(fused)
        x, y = data.load(config).as_numpy("train")
        x, y = x[:batch], y[:batch]
        ours = np.asarray(fused(x, training=False), np.float64)
        theirs = np.asarray(plain(x, training=False), np.float64)
        diff = (float(np.abs(ours - theirs).max()), float(np.abs(theirs).max()))
        cpu = {"keras": [], "fused": []}

        def run(key, model):
            floor = workloads.Floor(model, workloads.floor_optimizer(config, model), x, y)

            def timed():
                start, wall = time.process_time(), time.perf_counter()
                images = floor.run(steps)
                cpu[key].append((time.process_time() - start) / steps)
                return images, time.perf_counter() - wall

            return timed

        cmp = common.alternate(
            {"keras": run("keras", plain), "fused": run("fused", fused)},
            reps=_reps(scale, BN_REPS),
            warmup=scale.warmup,
            log=log,
        )
    cpu = {k: Stats(v[scale.warmup :]) for k, v in cpu.items()}
    return cmp, cpu, diff, layers


def fused_bn(scale, log) -> Section:
    shape = _shape(scale)
    size, batch = shape["size"], shape["batch"]
    loads, bodies, goals, gains = [os.getloadavg()[0]], [], [], []
    header = [
        "model",
        "BatchNorm layers",
        "Keras BN images/s",
        "fused BN images/s",
        "fused / Keras, wall (paired)",
        "fused / Keras, process CPU s (paired)",
        "inference logits: max abs diff (relative)",
    ]
    for precision in _precisions():
        rows = []
        for name in shape["models"]:
            log(f"  {name}, {size} px, global batch {batch}, {_label(precision)}")
            result = _bn_one(name, precision, shape, scale, log)
            gc.collect()
            loads.append(os.getloadavg()[0])
            if result is None:
                rows.append([name, "0 (LayerNormalization)", "", "", "nothing to swap", "", ""])
                continue
            cmp, cpu, (diff, size_), layers = result
            gain = cmp.ratio("fused")
            cpu_gain = Stats(
                [k / f for k, f in zip(cpu["keras"].values, cpu["fused"].values, strict=True)]
            )
            gains.append(f"{name} {fmt(gain.median)}x")
            rows.append(
                [
                    name,
                    str(layers),
                    spread(cmp.stats["keras"]),
                    spread(cmp.stats["fused"]),
                    spread(gain),
                    spread(cpu_gain),
                    f"{diff:.2g} ({diff / max(size_, 1e-30):.2g})",
                ]
            )
            goals.append(
                (
                    f"{_label(precision)} {name}: fused >= {GAIN}x Keras per step "
                    f"({fmt(gain.median)}x)",
                    gain.median >= GAIN,
                )
            )
        bodies.append(
            f"**{_label(precision)}** ({size} px, global batch {batch}, one step per run; "
            "median (min-max), ratios paired per repetition)\n\n" + table(header, rows)
        )
    bodies += [n for n in [_bf16_note()] if n]
    return Section(
        title=f"12. Fused BatchNorm in keras.applications backbones at {size} px",
        command=scale.cmd("fused_bn"),
        setup=(
            "The compute floor (forward, backward and Adam on one fixed batch, no input "
            "pipeline) of each backbone as `models.build` makes it, its BatchNormalization "
            "layers on TensorFlow's fused kernel (`models.layers.BatchNormalization`), against "
            "the same model with Keras' own BatchNormalization (same config and weights), "
            f"alternating in one process; {_reps(scale, BN_REPS)} timed repetitions after "
            f"{scale.warmup} warm-up. Besides wall time, the process's CPU seconds per step "
            "(less sensitive to the share of a busy machine). The logits of both versions "
            f"are compared in inference mode on the batch before training. {_where(loads)}"
        ),
        body="\n\n".join(bodies),
        meaning=(
            f"A whole training step with the fused layer runs at {', '.join(gains)} the rate "
            "with Keras' layer. ConvNeXt normalizes with LayerNormalization: nothing to swap."
        ),
        goals=goals,
    )
