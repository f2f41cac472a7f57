"""The benchmarks behind BENCHMARKS.md; each returns a `common.Section`.

Names (for `run_all.py --only`): vs_fit, segments, layer_decay, adaptive, input,
memory_startup, growth, replicas, checkpoint, runtime; data (bench/data_scale.py), stream
(bench/tfds_stream.py), size224 and fused_bn (bench/real_size.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import tensorflow as tf

from bench import common, data_scale, real_size, tfds_stream, workloads
from bench.common import Section, Stats, alternate, fmt, rate, spread, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Scale:
    """How big the runs are. `full` is what BENCHMARKS.md reports; `quick` checks the code."""

    name: str
    small: str  # the small ResNet
    large: str | None  # ResNet50 at 32x32 (None: skipped)
    batch: int
    steps: int  # steps per timed repetition of the small model
    large_batch: int
    large_steps: int
    batches: tuple[int, ...]  # growth: global batch sizes
    growth_images: int  # images per repetition of the batch sweep
    loop_model: str  # growth: model of the steps_per_loop sweep (small steps show overhead)
    loop_batch: int  # growth: batch of the steps_per_loop sweep
    loop_steps: int  # steps per repetition of the steps_per_loop sweep (>= 100 for 100)
    loops: tuple[int, ...]
    child_steps: int
    rounds: int  # interleaved runs of each candidate per repetition (see common.alternate)
    reps: int = 5
    warmup: int = 1
    reps_given: bool = False  # --reps given explicitly (suites with costly runs default lower)

    def compare(self, candidates, log, **kw):
        """`common.alternate` at this scale's repetitions, warm-up and rounds."""
        kw.setdefault("rounds", self.rounds)
        return alternate(candidates, reps=self.reps, warmup=self.warmup, log=log, **kw)

    @classmethod
    def full(cls) -> Scale:
        return cls(
            name="full",
            small="resnet20",
            large="resnet50",
            batch=128,
            steps=8,
            large_batch=64,
            large_steps=4,
            batches=(32, 64, 128, 256, 512),
            growth_images=1024,
            loop_model="resnet8",
            loop_batch=32,
            loop_steps=100,
            loops=(1, 10, 100),
            child_steps=10,
            rounds=2,
        )

    @classmethod
    def quick(cls) -> Scale:
        return cls(
            name="quick",
            small="resnet8",
            large=None,
            batch=64,
            steps=4,
            large_batch=32,
            large_steps=2,
            batches=(32, 128, 512),
            growth_images=512,
            loop_model="resnet8",
            loop_batch=16,
            loop_steps=20,
            loops=(1, 10, 20),
            child_steps=4,
            rounds=2,
        )

    def cmd(self, name: str) -> str:
        quick = " --quick" if self.name == "quick" else ""
        return f"python3 bench/run_all.py{quick} --only={name}"


def _pct_slower(ratio: float) -> float:
    """Percent slower than the baseline for a throughput ratio (candidate / baseline)."""
    return (1.0 / ratio - 1.0) * 100.0


# 1. vs model.fit -----------------------------------------------------------------------------


def _vs_fit_model(model, batch, steps, scale, log):
    examples = batch * steps
    cfg = workloads.make_config(model, batch, examples)
    trainer = workloads.Trainer(cfg)
    jit_cfg = cfg.replace(jit_compile=True, model_dir=workloads.tmpdir(model))
    trainer_jit = workloads.Trainer(jit_cfg)
    fit = workloads.Fit(cfg)
    fit_tuned = workloads.Fit(cfg, steps_per_execution=steps, jit_compile=True)
    with workloads.closing(trainer, trainer_jit, fit, fit_tuned):
        cmp = scale.compare(
            {
                "fit": fit.timed_epoch,
                "fit_tuned": fit_tuned.timed_epoch,
                "trainer": trainer.timed_epoch,
                "trainer_jit": trainer_jit.timed_epoch,
                "floor": rate(lambda: trainer.run_floor(steps)),
            },
            log,
        )
    labels = {
        "fit": "model.fit, defaults",
        "fit_tuned": f"model.fit, steps_per_execution={steps}, jit_compile=True",
        "trainer": "trainer, defaults (steps_per_loop=50)",
        "trainer_jit": "trainer, --jit_compile",
        "floor": "compute floor: one fixed batch, forward + backward + update only",
    }
    return cmp, labels, statistics.median(fit.call_overheads)


def vs_fit(scale: Scale, log) -> Section:
    bodies, goals, notes = [], [], []
    runs = [(scale.small, scale.batch, scale.steps)]
    if scale.large:
        runs.append((scale.large, scale.large_batch, scale.large_steps))
    for model, batch, steps in runs:
        log(f"  {model}, global batch {batch}, {steps} steps per repetition")
        cmp, labels, overhead = _vs_fit_model(model, batch, steps, scale, log)
        epoch_sec = batch * steps / cmp.stats["fit"].median
        bodies.append(
            f"**{model}**, 32x32, global batch {batch}, Adam + SGDR, one epoch of {steps} "
            f"steps per run, {scale.rounds} runs per repetition\n\n"
            + common.comparison_table(cmp, "images/sec", labels)
        )
        default = cmp.ratio("trainer").median
        best = max(cmp.ratio("trainer").median, cmp.ratio("trainer_jit").median)
        goals.append((f"{model} trainer defaults >= 1.0x fit ({fmt(default)}x)", default >= 1.0))
        goals.append((f"{model} best trainer settings >= 1.2x fit ({fmt(best)}x)", best >= 1.2))
        fit_best = max(cmp.stats["fit"].median, cmp.stats["fit_tuned"].median)
        vs_best = cmp.stats["trainer"].median / fit_best
        floor = cmp.ratio("floor").median
        notes.append(
            f"{model}: the trainer with defaults runs at {fmt(default)}x model.fit's speed "
            f"with fit's defaults and {fmt(vs_best)}x fit at its best (defaults or "
            "steps_per_execution + XLA); "
            f"--jit_compile gives {fmt(cmp.ratio('trainer_jit').median)}x. The compute floor "
            f"is {fmt(floor)}x fit: no loop can be faster than that on this model and machine"
            + (", so the 1.2x goal is out of reach here." if floor < 1.2 else ".")
            + f" Each fit() call spent {fmt(overhead)} s outside its {fmt(epoch_sec)} s epoch"
            " (not counted)."
        )
    return Section(
        title="1. Training speed: trainer vs Keras model.fit",
        command=scale.cmd("vs_fit"),
        setup=(
            "Same model (same seed), same in-memory synthetic data (fit gets the arrays the "
            "trainer's pipeline gathers), same global batch, Adam with the same SGDR schedule, "
            "accuracy counted on both sides, each side's default placement on the CPU "
            "(trainer: `--strategy=auto`, i.e. OneDeviceStrategy; fit: no strategy). A run is "
            "one epoch: one `fit()` call timed from its epoch's begin to its end by a callback "
            "(the rest of the `fit()` call, paid once per call in real use, is left out), or "
            "the trainer's compiled loop over the same number of steps from its live "
            "iterator, timed by the wall clock. The compute floor is the same model and "
            "optimizer stepping on one fixed batch held in memory, with no input pipeline and "
            "no metrics: an upper bound for any training loop."
        ),
        body="\n\n".join(bodies),
        meaning=" ".join(notes),
        goals=goals,
    )


# 2. Differential learning rates overhead ---------------------------------------------------


UPDATE_STEPS = 200  # optimizer updates per timed run of the segments benchmark's update table


@dataclasses.dataclass
class StepsAndUpdates:
    """Whole training steps and the optimizer update alone, for candidates on one model.

    `step_ms`: the baseline's milliseconds per step; `step_rows` / `update_rows`: table rows;
    per candidate, `ratios` (paired step-rate ratio to the baseline) and `shares` (its extra
    update time, paired median, in percent of the baseline's step).
    """

    step_ms: float
    step_rows: list
    update_rows: list
    ratios: dict
    shares: dict


def steps_and_updates(runners: dict, scale: Scale, log, updates: int) -> StepsAndUpdates:
    """Times `runners` (name -> `workloads.Trainer`; the first is the baseline) on whole
    epochs, then on `updates` compiled optimizer updates per run with fixed gradients."""
    steps = scale.compare({k: rate(r.run_epoch) for k, r in runners.items()}, log)
    log(f"  optimizer update alone, {updates} updates per run")
    upd = scale.compare(
        {k: rate(lambda r=r: r.run_updates(updates)) for k, r in runners.items()}, log
    )
    step_ms = 1000.0 * scale.batch / steps.stats[steps.baseline].median
    update_ms = {k: [1000.0 / v for v in st.values] for k, st in upd.stats.items()}
    base_ms = update_ms[upd.baseline]
    out = StepsAndUpdates(step_ms, [], [], {}, {})
    for name, stats in steps.stats.items():
        base = name == steps.baseline
        ratio = steps.ratio(name)
        extra = Stats([a - b for a, b in zip(update_ms[name], base_ms, strict=True)])
        out.ratios[name] = ratio
        out.shares[name] = 100.0 * extra.median / step_ms
        out.step_rows.append(
            [
                name,
                spread(stats),
                "1 (baseline)" if base else spread(ratio),
                "" if base else f"{_pct_slower(ratio.median):+.1f}%",
            ]
        )
        out.update_rows.append(
            [
                name,
                spread(Stats(update_ms[name])),
                "" if base else spread(extra),
                "" if base else f"{out.shares[name]:+.2f}%",
            ]
        )
    return out


def segments(scale: Scale, log) -> Section:
    import models

    model = scale.small
    probe = models.build(model, workloads.NUM_CLASSES)
    splits = {n: workloads.even_splits(probe, n) for n in (3, 8)}
    del probe
    bodies, goals, worst_step, worst_share, inside = [], [], 0.0, 0.0, True
    for opt in ("adam", "momentum"):
        log(f"  {opt}")
        runners = {}
        for n in (1, 3, 8):
            cfg = workloads.make_config(
                model,
                scale.batch,
                scale.batch * scale.steps,
                optimizer=opt,
                split_at=splits.get(n, ()),
                lr_spread=100.0 if n > 1 else None,
            )
            runners[n] = workloads.Trainer(cfg)
        named = {f"{n} segment{'s' if n > 1 else ''}": r for n, r in runners.items()}
        with workloads.closing(*runners.values()):
            timed = steps_and_updates(named, scale, log, UPDATE_STEPS)
        step_ms, rows, update_rows = timed.step_ms, timed.step_rows, timed.update_rows
        for name in list(named)[1:]:
            r, share = timed.ratios[name], timed.shares[name]
            worst_step = max(worst_step, _pct_slower(r.median))
            worst_share = max(worst_share, share)
            inside = inside and r.min <= 1.0 <= r.max
            goals.append((f"{opt} {name} <= 2% of a step ({share:+.2f}%)", share <= 2.0))
        bodies.append(
            f"**{opt}** ({'Adam' if opt == 'adam' else 'SGD, momentum 0.9'}), {model}, "
            f"global batch {scale.batch}: whole training steps\n\n"
            + table(
                [
                    "learning rates",
                    "images/sec, median (min-max)",
                    "ratio to 1 segment",
                    "slower by (median)",
                ],
                rows,
            )
            + f"\n\n**{opt}**: the optimizer update alone ({UPDATE_STEPS} compiled updates of "
            f"every trainable variable per run, fixed gradients), against a {fmt(step_ms)} ms "
            "training step\n\n"
            + table(
                [
                    "learning rates",
                    "ms per update, median (min-max)",
                    "extra ms vs 1 segment (paired)",
                    "extra, share of a step (median)",
                ],
                update_rows,
            )
        )
    return Section(
        title="2. Overhead of differential learning rates",
        command=scale.cmd("segments"),
        setup=(
            f"The trainer with one learning rate vs 3 and 8 segments (split points spread "
            f"evenly over the weighted layers: {', '.join(splits[3])} and "
            f"{', '.join(splits[8])}; multipliers geometric over a 100x spread), same "
            "optimizer, data and batch. Segments change only the optimizer update (the "
            "forward and backward passes are the same graph), so besides whole steps the "
            "update is timed alone, where a difference of a fraction of a millisecond is "
            "measurable; the goal is judged on that extra time as a share of a step."
        ),
        body="\n\n".join(bodies),
        meaning=(
            "Each segment's rate is a Python constant multiplied into the learning rate "
            "inside the optimizer's per-variable update while tracing, so segments add one "
            f"scalar multiply per variable per step: at most {worst_share:+.2f}% of a "
            f"training step measured alone. Whole steps differ by at most {worst_step:+.1f}% "
            "(median)"
            + (
                ", and every paired min-max range includes 1: the machine's noise is larger "
                "than the effect."
                if inside
                else "."
            )
        ),
        goals=goals,
    )


LAYER_DECAY_UPDATES = 50  # ResNet-50 updates per timed run (about 10 s on 2 CPU cores)


def layer_decay(scale: Scale, log) -> Section:
    """The optimizer update with one segment per weighted layer (--layer_decay) vs one."""
    from trainer.lr import segments as segments_lib

    model = scale.large or scale.small
    updates = LAYER_DECAY_UPDATES
    bodies, goals = [], []
    count = None
    for opt in ("adam", "momentum"):
        log(f"  {opt}: optimizer update alone, {updates} updates per run")
        runners = {}
        for name, extra in (("1 segment", {}), ("layer decay 0.7", {"layer_decay": 0.7})):
            cfg = workloads.make_config(model, scale.batch, scale.batch * 2, optimizer=opt, **extra)
            runners[name] = workloads.Trainer(cfg)
        with workloads.closing(*runners.values()):
            exp = runners["layer decay 0.7"].exp
            count = exp.table.num_segments
            rows = segments_lib.layer_rows(exp.model, ())
            assert count == sum(1 for r in rows if r.trainable_params)
            upd = scale.compare(
                {k: rate(lambda r=r: r.run_updates(updates)) for k, r in runners.items()},
                log,
            )
        ratio = upd.ratio("layer decay 0.7")
        # A rate ratio below 1 is a slower update: time ratio = 1 / rate ratio.
        slower = _pct_slower(ratio.median)
        goals.append((f"{opt}: update within 2% of one segment's ({slower:+.1f}%)", slower <= 2.0))
        table_rows = []
        for name, stats in upd.stats.items():
            ms = Stats([1000.0 / v for v in stats.values])
            base = name == upd.baseline
            table_rows.append(
                [
                    name if base else f"{name} ({count} segments)",
                    spread(ms),
                    "1 (baseline)" if base else spread(upd.ratio(name)),
                    "" if base else f"{slower:+.1f}%",
                ]
            )
        bodies.append(
            f"**{opt}** ({'Adam' if opt == 'adam' else 'SGD, momentum 0.9'}), {model}\n\n"
            + table(
                [
                    "learning rates",
                    "ms per update, median (min-max)",
                    "update rate ratio to 1 segment",
                    "slower by (median)",
                ],
                table_rows,
            )
        )
    return Section(
        title="2b. Layer-wise learning-rate decay: one segment per weighted layer",
        command=scale.cmd("layer_decay"),
        setup=(
            f"`--layer_decay=0.7` makes each of {model}'s {count} layers with weights its own "
            "segment (multiplier 0.7**(L - l), the head at 1). The optimizer update alone "
            f"({updates} compiled updates of every trainable variable per run, fixed "
            "gradients) against the same optimizer with one learning rate."
        ),
        body="\n\n".join(bodies),
        meaning=(
            "The multipliers are Python constants folded into each variable's update while "
            "tracing, so a segment per layer costs one scalar multiply per variable, whatever "
            "the number of segments."
        ),
        goals=goals,
    )


ADAPTIVE_UPDATES = 100  # optimizer updates per timed run of the Auto-RGN update table


def adaptive(scale: Scale, log) -> Section:
    """Auto-RGN's cost: one rate vs --adaptive_lr=rgn per tensor and per layer (Adam)."""
    model = scale.small
    candidates = {
        "one rate": {},
        "Auto-RGN per tensor": {"adaptive_lr": "rgn"},
        "Auto-RGN per layer": {"adaptive_lr": "rgn", "adaptive_lr_granularity": "layer"},
    }
    runners = {
        name: workloads.Trainer(
            workloads.make_config(model, scale.batch, scale.batch * scale.steps, **extra)
        )
        for name, extra in candidates.items()
    }
    count = len(runners["one rate"].variables)
    with workloads.closing(*runners.values()):
        timed = steps_and_updates(runners, scale, log, ADAPTIVE_UPDATES)
    shares = {n: timed.shares[n] for n in list(candidates)[1:]}
    goals = [(f"{n}: <= 5% of a step ({x:+.2f}%)", x <= 5.0) for n, x in shares.items()]
    body = (
        f"**Adam**, {model} ({count} trainable variables), global batch {scale.batch}: whole "
        "training steps\n\n"
        + table(
            ["learning rates", "images/sec, median (min-max)", "ratio to one rate", "slower by"],
            timed.step_rows,
        )
        + f"\n\nThe optimizer update alone ({ADAPTIVE_UPDATES} compiled updates of every "
        f"trainable variable per run, fixed gradients), against a {fmt(timed.step_ms)} ms "
        "training step\n\n"
        + table(
            [
                "learning rates",
                "ms per update, median (min-max)",
                "extra ms vs one rate (paired)",
                "extra, share of a step (median)",
            ],
            timed.update_rows,
        )
    )
    worst = max(shares.values())
    return Section(
        title="2c. Auto-RGN: per-variable rates from relative gradient norms",
        command=scale.cmd("adaptive"),
        setup=(
            "`--adaptive_lr=rgn` computes, inside the compiled step, the norm of every "
            "variable's gradient and weights, the multipliers (RGN over the largest) and "
            "multiplies each variable's rate by its own; per layer, the norms are summed over "
            "each layer's variables first. Same optimizer, data and batch as one rate; whole "
            "steps, and the update alone, where the norms are computed."
        ),
        body=body,
        meaning=(
            f"The norms cost at most {worst:+.2f}% of a training step measured in the update "
            "alone: two reductions per variable (its gradient and its weights), read once "
            "more than the update itself reads them."
        ),
        goals=goals,
    )


def input_pipeline(scale: Scale, log) -> Section:
    model, batch = scale.small, scale.batch
    examples = batch * scale.steps
    folder = workloads.write_image_folder(workloads.tmpdir("jpeg"), examples, 32, 10)
    train_cfg = workloads.make_config(model, batch, examples, augment=True)
    trainer = workloads.Trainer(train_cfg)
    synthetic_cfg = train_cfg.replace(model_dir=workloads.tmpdir("pipe"))
    jpeg_cfg = synthetic_cfg.replace(dataset=f"folder:{folder}")
    batches = scale.steps * 2
    try:
        with workloads.closing(trainer):
            cmp = scale.compare(
                {
                    "training": rate(trainer.run_epoch),
                    "pipeline_synthetic": rate(
                        lambda: workloads.pipeline_rate(synthetic_cfg, batches)
                    ),
                    "pipeline_jpeg": rate(lambda: workloads.pipeline_rate(jpeg_cfg, batches)),
                },
                log,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(synthetic_cfg.model_dir, ignore_errors=True)
    labels = {
        "training": f"training ({model}, trainer defaults, --augment)",
        "pipeline_synthetic": "pipeline alone: in-memory pixels, augment, batch",
        "pipeline_jpeg": "pipeline alone: JPEG files (folder:), decode, augment, batch",
    }
    short = {"pipeline_synthetic": "in-memory pipeline", "pipeline_jpeg": "JPEG pipeline"}
    goals = [
        (f"{short[n]} >= 3x training ({fmt(cmp.ratio(n).median)}x)", cmp.ratio(n).median >= 3.0)
        for n in short
    ]
    slowest = min(cmp.ratio(n).median for n in short)
    return Section(
        title="3. Input pipeline vs training",
        command=scale.cmd("input"),
        setup=(
            f"The trainer's own training pipeline (`trainer.data.Data.train_dataset`: shuffled by "
            f"epoch, pad-and-crop + flip, batched by {batch}, prefetched), pulled alone as "
            "fast as it goes, vs the training rate with that pipeline. The JPEG case reads "
            f"{examples} generated 32x32 JPEG files through `--dataset=folder:`."
        ),
        body=common.comparison_table(cmp, "images/sec", labels),
        meaning=(
            f"Even the slower pipeline produces images {fmt(slowest)}x as fast as training "
            "consumes them, and it prefetches on its own threads, so it is not the "
            "bottleneck at 32x32 (larger images cost more to decode and resize)."
        ),
        goals=goals,
    )


# 4 + 7a. Peak memory and start-up, child processes -----------------------------------------


def _child(side, model, batch, steps, env=None):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "bench", "child.py"),
        side,
        model,
        str(batch),
        str(steps),
    ]
    launched = time.time()
    proc = subprocess.run(
        cmd + [repr(launched)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {cmd} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_startup(scale: Scale, log) -> Section:
    model, batch, steps = scale.small, scale.batch, scale.child_steps
    results = {"trainer": [], "fit": []}

    def side(name):
        def run():
            r = _child(name, model, batch, steps)
            results[name].append(r)
            return r["peak_rss_mib"]

        return run

    cmp = scale.compare({"fit": side("fit"), "trainer": side("trainer")}, log, rounds=1)
    # Drop the warm-up children's records the way `alternate` drops their values.
    for name in results:
        results[name] = results[name][scale.warmup :]
    first = {n: common.Stats([r["first_step_sec"] for r in rs]) for n, rs in results.items()}
    first_ratio = common.Stats(
        [
            t["first_step_sec"] / f["first_step_sec"]
            for t, f in zip(results["trainer"], results["fit"], strict=True)
        ]
    )
    rss_ratio = cmp.ratio("trainer")
    body = (
        f"**Peak resident memory** ({model}, global batch {batch}, {steps} steps, one process "
        "each; peak RSS is the child's VmHWM)\n\n"
        + table(
            ["candidate", "peak RSS MiB, median (min-max)", "ratio to model.fit"],
            [
                ["model.fit", spread(cmp.stats["fit"]), "1 (baseline)"],
                ["trainer", spread(cmp.stats["trainer"]), spread(rss_ratio)],
            ],
        )
        + "\n\n**Time to the end of the first training step** (from launching the process: "
        "interpreter, imports, data, model build, tracing, one step)\n\n"
        + table(
            ["candidate", "seconds, median (min-max)", "ratio to model.fit"],
            [
                ["model.fit", spread(first["fit"]), "1 (baseline)"],
                ["trainer", spread(first["trainer"]), spread(first_ratio)],
            ],
        )
    )
    return Section(
        title="4 and 7a. Peak memory and time to first step",
        command=scale.cmd("memory_startup"),
        setup=(
            "Each repetition launches one child process per side (`bench/child.py`), "
            "alternating, which builds everything and trains, then reports its own peak "
            "resident memory (VmHWM in /proc/self/status: unlike `wait4`'s rusage it does not "
            "count the parent's memory at fork time)."
        ),
        body=body,
        meaning=(
            f"The trainer peaks at {fmt(rss_ratio.median)}x model.fit's memory and reaches its "
            f"first step in {fmt(first_ratio.median)}x fit's time (start-up is paid once per "
            "run; both sides import TensorFlow and trace one training function)."
        ),
        goals=[(f"peak RSS <= 1.1x model.fit ({fmt(rss_ratio.median)}x)", rss_ratio.median <= 1.1)],
    )


# 5. Growth with batch size and steps_per_loop ----------------------------------------------


def growth(scale: Scale, log) -> Section:
    model = scale.small
    candidates, runners = {}, []
    for batch in scale.batches:
        steps = max(scale.growth_images // batch, 1)
        cfg = workloads.make_config(model, batch, batch * steps)
        t, f = workloads.Trainer(cfg), workloads.Fit(cfg)
        runners += [t, f]
        candidates[f"fit@{batch}"] = f.timed_epoch
        candidates[f"trainer@{batch}"] = t.timed_epoch
    log(f"  batch sizes {scale.batches}")
    with workloads.closing(*runners):
        by_batch = scale.compare(candidates, log, rounds=1)
    rows = []
    for batch in scale.batches:
        t, f = by_batch.stats[f"trainer@{batch}"], by_batch.stats[f"fit@{batch}"]
        paired = common.Stats([a / b for a, b in zip(t.values, f.values, strict=True)])
        rows.append([str(batch), spread(t), spread(f), spread(paired)])
    batch_table = table(
        ["global batch", "trainer images/sec", "model.fit images/sec", "trainer / fit"], rows
    )

    log(f"  steps_per_loop {scale.loops}")
    loop_runners = {}
    for spl in scale.loops:
        cfg = workloads.make_config(
            scale.loop_model,
            scale.loop_batch,
            scale.loop_batch * scale.loop_steps,
            steps_per_loop=spl,
        )
        loop_runners[spl] = workloads.Trainer(cfg)
    with workloads.closing(*loop_runners.values()):
        by_loop = scale.compare(
            {f"steps_per_loop={s}": rate(r.run_epoch) for s, r in loop_runners.items()}, log
        )
    best = max(by_batch.stats[f"trainer@{b}"].median for b in scale.batches)
    best_batch = [b for b in scale.batches if by_batch.stats[f"trainer@{b}"].median == best][0]
    spl_gain = by_loop.ratio(f"steps_per_loop={scale.loops[-1]}").median
    return Section(
        title="5. Growth: global batch size and steps_per_loop",
        command=scale.cmd("growth"),
        setup=(
            f"Adam + SGDR. Batch sweep: {model}, {scale.growth_images} images per run "
            f"for every batch size, trainer defaults and model.fit defaults alternating. "
            f"steps_per_loop sweep: {scale.loop_model} at global batch {scale.loop_batch} "
            f"(small, fast steps show the per-call overhead most), {scale.loop_steps} steps "
            f"per run, {scale.rounds} runs per repetition."
        ),
        body=batch_table + "\n\n" + common.comparison_table(by_loop, "images/sec"),
        meaning=(
            f"The trainer's throughput peaks at global batch {best_batch} on this machine. "
            f"Running {scale.loops[-1]} steps per compiled call instead of 1 gives "
            f"{fmt(spl_gain)}x at batch {scale.loop_batch}"
            + (
                ": steps_per_loop amortizes the per-call Python and dispatch cost."
                if spl_gain >= 1.05
                else ": no gain above the noise here, the per-call cost is small next to even "
                "this small model's CPU step (it matters more for fast GPU steps)."
            )
        ),
    )


# 6. Replicas ---------------------------------------------------------------------------------


def replicas(scale: Scale, log) -> Section:
    model, batch = scale.small, scale.batch
    examples = batch * scale.steps
    cfg = workloads.make_config(model, batch, examples)
    one = workloads.Trainer(cfg, tf.distribute.OneDeviceStrategy("/cpu:0"))
    from trainer.loop.strategy import make_strategy

    two = workloads.Trainer(
        cfg.replace(model_dir=workloads.tmpdir("two")),
        make_strategy("mirrored", devices=["/cpu:0", "/cpu:1"]),
    )
    with workloads.closing(one, two):
        cmp = scale.compare({"one": rate(one.run_epoch), "two": rate(two.run_epoch)}, log)
    labels = {
        "one": "1 device (OneDeviceStrategy /cpu:0)",
        "two": "2 replicas (MirroredStrategy over 2 logical CPUs)",
    }
    r = cmp.ratio("two").median
    return Section(
        title="6. Two replicas vs one device",
        command=scale.cmd("replicas"),
        setup=(
            f"{model}, global batch {batch} on both (2 x {batch // 2} per replica), Adam + "
            "SGDR. The two logical CPUs share the machine's cores, so the ideal ratio is 1: "
            "anything below it is the distributed path's cost (per-replica dispatch, the "
            "gradient all-reduce, the split of each global batch)."
        ),
        body=common.comparison_table(cmp, "images/sec", labels),
        meaning=(
            f"Two replicas run at {fmt(r)}x the single device on the same cores: "
            + (
                f"the distributed path costs {_pct_slower(r):.1f}% here."
                if r < 1.0
                else "no measurable cost for the distributed path here."
            )
        ),
    )


# 7b. Checkpoint cost -------------------------------------------------------------------------


def checkpoint(scale: Scale, log) -> Section:
    rows, goals = [], []
    runs = [(scale.small, scale.batch, scale.steps)]
    if scale.large:
        runs.append((scale.large, scale.large_batch, scale.large_steps))
    every = workloads.make_config("resnet8", 8, 8).checkpoint_every_steps
    worst_share = 0.0
    for model, batch, steps in runs:
        cfg = workloads.make_config(model, batch, batch * steps)
        t = workloads.Trainer(cfg)

        def step_seconds(t=t, steps=steps):
            start = time.perf_counter()
            t.run_steps(steps)
            return (time.perf_counter() - start) / steps

        saves = iter(range(1, 10**6))

        def save_seconds(t=t, counter=saves):
            start = time.perf_counter()
            t.checkpoint(next(counter))
            return time.perf_counter() - start

        log(f"  {model}")
        with workloads.closing(t):
            cmp = scale.compare({"step": step_seconds, "save": save_seconds}, log, rounds=1)
            size = sum(
                os.path.getsize(os.path.join(d, f))
                for d, _, files in os.walk(t.exp.checkpointer.directory)
                for f in files
            ) / max(len(t.exp.checkpointer.steps()), 1)
        share = common.Stats([r / every * 100 for r in cmp.ratio("save").values])
        rows.append(
            [
                model,
                spread(cmp.stats["step"]),
                spread(cmp.stats["save"]),
                f"{size / 2**20:.1f}",
                spread(share),
            ]
        )
        goals.append((f"{model} checkpointing < 1% ({fmt(share.median)}%)", share.median < 1.0))
        worst_share = max(worst_share, share.median)
    return Section(
        title="7b. Cost of checkpointing",
        command=scale.cmd("checkpoint"),
        setup=(
            f"One checkpoint save (model, optimizer slots, counters; the rolling manager keeps "
            f"3) against {every} training steps, the default `--checkpoint_every_steps`; "
            "saves and training alternate in one process. Global batch as in table 1."
        ),
        body=table(
            [
                "model",
                "seconds per step",
                "seconds per save",
                "MiB per checkpoint",
                f"save / {every} steps, %",
            ],
            rows,
        ),
        meaning=(
            f"At the default interval a save costs at most {fmt(worst_share)}% of the training "
            "between two saves (median), so checkpointing is not a reason to save rarely."
        ),
        goals=goals,
    )


# 8. TensorFlow runtime defaults -------------------------------------------------------------

TF_OWN = {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPU_ALLOCATOR_USE_BFC": "false"}
LRTECH = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPU_ALLOCATOR_USE_BFC": "true"}


def _cpu_has_onednn_default() -> bool:
    """Whether TensorFlow turns oneDNN on by itself here (AVX-512 VNNI/BF16 or AMX)."""
    return bool(common.cpu_flags() & {"avx512_vnni", "avx512_bf16", "amx_tile"})


def runtime(scale: Scale, log) -> Section:
    model, batch, steps = scale.small, scale.batch, scale.child_steps
    images = (steps - 1) * batch

    def child(side, env):
        def run():
            return images, _child(side, model, batch, steps, env)["train_sec"]

        return run

    cmp = scale.compare(
        {
            "fit_tf": child("fit", TF_OWN),
            "fit_lrtech": child("fit", LRTECH),
            "trainer_tf": child("trainer", TF_OWN),
            "trainer_lrtech": child("trainer", LRTECH),
        },
        log,
        rounds=1,
    )
    labels = {
        "fit_tf": "model.fit, oneDNN off, default allocator",
        "fit_lrtech": "model.fit, oneDNN on, BFC allocator",
        "trainer_tf": "trainer, oneDNN off, default allocator",
        "trainer_lrtech": "trainer, oneDNN on, BFC allocator (its default)",
    }
    gain = cmp.ratio("trainer_lrtech").median / cmp.ratio("trainer_tf").median
    own = "on" if _cpu_has_onednn_default() else "off"
    return Section(
        title="8. TensorFlow runtime defaults set by `trainer.runtime.configure()`",
        command=scale.cmd("runtime"),
        setup=(
            f"{model}, global batch {batch}: one child process per run (the variables are read "
            f"once per process), {steps - 1} steps timed after the first. TensorFlow's own "
            f"default on this CPU is oneDNN {own} (it switches oneDNN on by itself only with "
            "AVX-512 VNNI/BF16 or AMX) and the per-tensor allocator; "
            "`trainer.runtime.configure()` sets TF_ENABLE_ONEDNN_OPTS=1 and "
            "TF_CPU_ALLOCATOR_USE_BFC=true unless they are set."
        ),
        body=common.comparison_table(cmp, "images/sec", labels),
        meaning=(
            f"The two settings make the trainer {fmt(gain)}x and model.fit "
            f"{fmt(cmp.ratio('fit_lrtech').median)}x as fast as under TensorFlow's defaults on "
            "this machine. Tables 1-7 run both sides with them, in one process, so their "
            "ratios compare the training loops alone."
        ),
    )


RUNNERS = {
    "vs_fit": vs_fit,
    "segments": segments,
    "layer_decay": layer_decay,
    "adaptive": adaptive,
    "input": input_pipeline,
    "memory_startup": memory_startup,
    "growth": growth,
    "replicas": replicas,
    "checkpoint": checkpoint,
    "runtime": runtime,
    "data": data_scale.data_scale,
    "stream": tfds_stream.tfds_stream,
    "size224": real_size.size224,
    "fused_bn": real_size.fused_bn,
}
