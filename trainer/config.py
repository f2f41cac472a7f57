"""The frozen run configuration: the one contract between run_train.py's flags and the library.

run_train.py turns absl FLAGS into a `Config` once; library code reads only this object.
Epoch-valued fields are resolved to steps by `trainer.loop.steps` once the dataset size is known.
"""

from __future__ import annotations

import dataclasses

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "nadam")
SCHEDULES = ("sgdr", "one_cycle", "cosine", "constant")
RECIPES = ("none", "fine_tune")
# Optimizers whose momentum (SGD) or beta_1 (Adam, AdamW) --cycle_momentum cycles.
CYCLE_MOMENTUM_OPTIMIZERS = ("momentum", "nesterov", "adam", "adamw")
STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
CACHE_POLICIES = ("auto", "memory", "none")
ADAPTIVE_LR = ("none", "rgn")
ADAPTIVE_GRANULARITIES = ("tensor", "layer")
INPUT_SCALES = ("raw", "unit", "minus_one_one", "imagenet_caffe", "imagenet_torch")
LAYER_DECAY_GROUPS = ("layer", "block", "stage")

# Upper bounds that turn would-be overflows, huge allocations and out-of-memory errors minutes
# into a run into one line at parse time (also the batch limit of predict and evaluate).
MAX_GLOBAL_BATCH = 65536
MAX_SYNTHETIC = 1_000_000
MAX_IMAGE_SIZE = 1024

# The fewest LR range test steps whose curve gives every suggestion: 16 points remain after
# fastai's trimming (the first 10%, the last 5); tests/test_lr_find.py checks 23 and 22.
LR_FIND_MIN_STEPS = 23
# The range test's suggestions (trainer.lr_find.finder.suggestions); --max_lr=auto trains at
# --lr_find_suggestion's, valley by default as in fastai.
LR_FIND_SUGGESTIONS = ("valley", "steep", "minimum", "slide")

# --image_size when neither the flag nor the model (a saved .keras input) gives one.
DEFAULT_IMAGE_SIZE = 32

# Image files read from folders and given to predict.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# How evaluation views an image, as export/labels.json names it: "resize" (the whole image
# resized, antialiased) or "center_crop" (a centered square of side --eval_crop x the shorter
# side, resized).
EVAL_PREPROCESSING = ("resize", "center_crop")
# Dataset specs held as decoded arrays (the others are encoded images, evaluated in full
# resolution at --image_size >= 128).
DECODED_DATASET_PREFIXES = ("npz:", "idx:", "synthetic:")
DECODED_DATASET_NAMES = ("sklearn_digits", "synthetic")


# What a resumed run may change (the one list; every other field must equal the run's):
# its length, how often it evaluates, checkpoints and logs, how it executes and reads data,
# and the LR range test's settings. The learning rates, schedule, model, data, segments,
# optimizer and averaging may not: the checkpoint's weights and state were made with them.
RESUME_MAY_CHANGE = (
    "model_dir",
    "data_dir",
    "epochs",
    "train_steps",
    "eval_every_epochs",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "steps_per_loop",
    "progress",
    "strategy",
    "jit_compile",
    "cache",
    "skip_corrupt",
    "snapshot_at_restarts",  # snapshots from now on; the training is the same
    "lr_find",
    "lr_find_start",
    "lr_find_end",
    "lr_find_steps",
    "lr_find_suggestion",  # --max_lr=auto resumes at the rate it chose
)


def _spans_the_run(record: dict) -> bool:
    # Schedules whose shape is set by the run's length: a new length would change the rates
    # of steps already planned (one-cycle, cosine, a recipe's phases, SGDR of one cycle).
    if record.get("recipe", "none") != "none" or record.get("schedule") in ("one_cycle", "cosine"):
        return True
    first_cycle = record.get("first_cycle_epochs"), record.get("first_cycle_steps")
    return record.get("schedule") == "sgdr" and first_cycle == (None, None)


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "''"
    return "none" if value is None else str(value)


def resume_conflicts(old: dict, new: Config) -> list[str]:
    """The flags of `new` that differ from the run recorded in `old` (config.json's "full")
    and may not change on resume, as "--flag=OLD -> NEW"; [] when it may resume."""
    current = {k: list(v) if isinstance(v, tuple) else v for k, v in new.to_dict().items()}
    out = []
    for key, value in current.items():
        if key in RESUME_MAY_CHANGE or key not in old:
            continue
        before = old[key]
        if key == "max_lr" and value == "auto":  # --max_lr=auto resumes at the rate it chose
            continue
        if isinstance(before, (int, float)) and isinstance(value, (int, float)):
            same = float(before) == float(value)
        else:
            same = before == value
        if not same:
            out.append(f"--{key}={_shown(before)} -> {_shown(value)}")
    length = ("epochs", "train_steps")
    if any(old.get(k) != current[k] for k in length if k in old) and _spans_the_run(old):
        was = ", ".join(f"--{k}={_shown(old.get(k))}" for k in length)
        out.append(
            f"the length ({was}), which the {old.get('schedule')} schedule spans: its rates "
            "would change"
        )
    return out


def length_error(epochs, train_steps, *, allow_none: bool = False) -> str | None:
    """The one check of a run's length: exactly one of epochs / train_steps (neither only
    where `allow_none`, for --list_layers and an LR range test alone); the message or None."""
    if (
        epochs is not None
        and train_steps is not None
        or (epochs is None and train_steps is None and not allow_none)
    ):
        return (
            f"give exactly one of --epochs / --train_steps; got epochs={epochs}, "
            f"train_steps={train_steps}"
        )
    return None


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of one training run. Units are in the field comments."""

    model_dir: str
    # Data.
    dataset: str = (
        "synthetic"  # TFDS | folder:PATH | npz:PATH | idx:DIR | sklearn_digits | synthetic
    )
    data_dir: str | None = None  # TFDS data dir
    train_split: str = "train"
    eval_split: str = "test"
    skip_corrupt: bool = False  # folder: skip (and count) unreadable images instead of failing
    augment: bool = True  # pad-and-random-crop + horizontal flip on the training split
    cache: str = "auto"  # auto | memory | none: hold images in memory or read them on demand
    eval_crop: float = 0.875  # full-resolution eval: centered square, fraction of shorter side
    synthetic_train_size: int = 2048  # examples
    synthetic_test_size: int = 512  # examples
    # Model.
    model: str = "resnet20"  # a name of models/, PATH.keras, or package.module:function
    weights: str = "none"  # imagenet | none | PATH to a .weights.h5 / .keras file
    head: str = "default"  # classification head variant, see models/
    image_size: int | None = None  # pixels (square); None: the model's (32, or a .keras input)
    new_head: bool | None = None  # user model: a fresh head (None: when the width differs)
    custom_objects: str | None = None  # user model: module(s) defining its custom layers
    input_scale: str = "raw"  # user model: what it expects of [0, 255] pixels
    num_classes: int | None = None  # inferred from the dataset when None
    # Length.
    global_batch_size: int = 128  # examples per step, summed over replicas
    epochs: float | None = None
    train_steps: int | None = None  # steps; exactly one of epochs / train_steps
    # Optimizer and schedule.
    optimizer: str = "adam"
    momentum: float = 0.9  # for momentum / nesterov / rmsprop
    weight_decay: float = 0.0  # decoupled, scaled by each segment's learning rate
    clipnorm: float | None = None  # global norm of the aggregated gradient
    schedule: str = "sgdr"
    max_lr: float | str = 1e-3  # head segment's peak learning rate, or "auto" (LR range test)
    min_lr: float = 0.0
    first_cycle_epochs: float | None = None
    first_cycle_steps: int | None = None
    cycle_mult: float = 2.0
    max_lr_decay: float = 1.0
    warmup_steps: int = 0
    pct_start: float | None = None  # one_cycle: fraction of steps rising (None: 0.25)
    div: float | None = None  # one_cycle: starts at max_lr / div (None: 25)
    div_final: float = 1e5  # one_cycle: ends at max_lr / div_final
    moms: tuple[float, ...] = (0.95, 0.85, 0.95)  # one_cycle momentum / beta_1 cycle
    cycle_momentum: bool | None = None  # None: on with one_cycle when the optimizer has one
    # LR range test.
    lr_find: bool = False
    lr_find_start: float = 1e-7
    lr_find_end: float = 10.0
    lr_find_steps: int = 100
    lr_find_suggestion: str = "valley"  # the suggestion --max_lr=auto trains at
    # Recipes.
    recipe: str = "none"  # none | fine_tune
    freeze_epochs: float = 1.0  # fine_tune: epochs training the head only, before --epochs
    # Differential learning rates.
    split_at: tuple[str, ...] = ()  # layer indices / names / "preset[:NAME]"
    lr_mults: tuple[float, ...] | None = None  # one per segment
    lr_spread: float | None = None  # geometric from max_lr/R to max_lr
    layer_decay: float | None = None  # every weighted layer (or block) a segment at D**(L - l)
    layer_decay_groups: str = "layer"  # layer | block | stage | name patterns (";"-separated)
    adaptive_lr: str = "none"  # none | rgn: per-variable multipliers from relative grad norms
    adaptive_lr_floor: float = 0.0  # the smallest adaptive multiplier
    adaptive_lr_granularity: str = "tensor"  # tensor | layer: one RGN per variable or layer
    train_bn: bool | None = None  # frozen segments' BatchNorm trains (None: on in fine_tune)
    freeze_segments: int = 0  # train only segments >= K at first
    unfreeze_every: float | None = None  # epochs between unfreezing one more segment
    # Execution.
    strategy: str = "auto"
    steps_per_loop: int = 50  # steps per compiled loop call
    jit_compile: bool = False
    mixed_precision: str = "none"
    eval_every_epochs: float = 1.0
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    snapshot_at_restarts: bool = False
    # Weight averaging (trainer.averaging.weight_averaging).
    ensemble_snapshots: int | None = None  # ensemble of the last M snapshots (implies snapshots)
    swa_start_epoch: float | None = None  # epochs; SWA averages from here on
    swa_every_epochs: float | None = None  # epochs between SWA updates without cycles (None: 1)
    swa_lr: float | None = None  # head learning rate from swa_start_epoch on (constant)
    swa_bn_augment: bool = False  # recompute BN statistics over augmented training images
    ema_decay: float | None = None  # exponential moving average of the weights, per step
    seed: int = 0
    progress: bool = True  # per-epoch progress bar

    def __post_init__(self):
        # The recipe's consequences, derived once: its phases are one-cycle schedules.
        if self.recipe != "none" and self.schedule != "one_cycle":
            object.__setattr__(self, "schedule", "one_cycle")

    @property
    def input_size(self) -> int:
        """--image_size, or the default 32 before a model resolved it (trainer.experiment)."""
        return self.image_size or DEFAULT_IMAGE_SIZE

    @property
    def has_restarts(self) -> bool:
        """Whether the schedule restarts (plain SGDR; a recipe's phases are not restarts)."""
        return self.schedule == "sgdr" and self.recipe == "none"

    @property
    def trains_bn(self) -> bool:
        """Whether frozen segments' BatchNorm layers train (--train_bn resolved: fastai's
        `train_bn`, on by default in the fine_tune recipe)."""
        if self.train_bn is not None:
            return self.train_bn
        return self.recipe == "fine_tune"

    @property
    def cycles_momentum(self) -> bool:
        """Whether momentum / beta_1 cycles with the schedule (--cycle_momentum resolved)."""
        if self.cycle_momentum is not None:
            return self.cycle_momentum
        return self.schedule == "one_cycle" and self.optimizer in CYCLE_MOMENTUM_OPTIMIZERS

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_flagfile(self) -> str:
        """The configuration as run_train.py flags, one per line: `--flagfile=` repeats the run."""
        lines = []
        for key, value in self.to_dict().items():
            if value is None:
                continue
            if isinstance(value, bool):
                lines.append(f"--{key}" if value else f"--no{key}")
            elif isinstance(value, (tuple, list)):
                lines.append(
                    f"--{key}="
                    + ",".join(repr(v) if isinstance(v, float) else str(v) for v in value)
                )
            elif isinstance(value, float):
                lines.append(f"--{key}={value!r}")
            else:
                lines.append(f"--{key}={value}")
        return "\n".join(lines) + "\n"
