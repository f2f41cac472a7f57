"""Block ids for block-wise layer decay: which residual block or stage each layer belongs to.

Layer-wise decay gives every layer with weights its own learning rate; block-wise decay (BEiT,
timm's ``param_groups_layer_decay`` with a model's ``group_matcher``) gives one rate per
residual block or per stage, so the rate falls by the same factor per block whether a block
has 3 convolutions or 9. `block_ids` numbers the groups from the layer names alone, in the
flattened layer order of `trainer.lr.segments.flatten_layers` (the caller passes the names;
`models` never imports `trainer`).

The rule:
  1. A layer name matches a block pattern: of a known family (table below, detected from the
     names, so a user model holding a keras.applications backbone gets its blocks too) or
     the caller's own patterns. A path "outer/inner/name" is matched innermost name first,
     so a container such as KerasHub's ``transformer_layer_3`` names its sublayers' block.
  2. Stem = group 0: every layer before the first matched one (and, for ``stage``, the
     blocks at the stem's resolution).
  3. Layers between matched ones join the block before them (a DenseNet transition ends its
     stage, Xception's shortcut convolutions come after their block's named layers).
  4. Head = the last group: the ``head_*`` layers of our heads; without them, every layer
     after the last matched one (a user model's pooling and classifier). With ``head_*``
     layers, the backbone's layers after its last block and before the head (EfficientNet's
     ``top_conv``, ResNetV2's ``post_bn``, ConvNeXt's final LayerNorm) form their own group
     just before the head, as timm groups ``conv_head``.
  5. Groups are contiguous and numbered in layer order; a layer of a block that already
     ended joins the current group. With `weighted`, a group without weights joins the next
     group (the last one joins the one before), so every group can be a segment.

Known families (granularity ``block`` / ``stage``; stages as in `models.applications`):

  ===================  ==============================  =====================================
  family               block                           stage
  ===================  ==============================  =====================================
  CIFAR ResNets        ``stage2_block1``               ``stage2``
  ResNet, DenseNet     ``conv3_block4``                ``conv3``
  ConvNeXt             ``*_stage_1_block_2``, with     ``*_stage_1`` (with the downsampling
                       ``*_downsampling_block_0`` in   block before it)
                       block ``stage_1_block_0``
  EfficientNet V1/V2   ``block2a``                     output resolution (block1 in stem,
                                                       4-5 and 6-7 together)
  MobileNetV2          ``block_5`` (``expanded_conv``  output resolution (block 0 in stem)
                       is block 0)
  MobileNetV3          ``expanded_conv_3``             output resolution
  Xception             ``block5``                      output resolution (block1 is stem)
  InceptionV3          ``mixed5`` (as `models.build`   grid size (mixed0-2, 3-7, 8-10)
                       names its layers)
  VGG                  ``block3``                      ``block3`` (block1 in stem)
  ===================  ==============================  =====================================

Caller patterns (``groups=["encoder_layer_\\d+", ...]``): regular expressions matched at the
start of a name (so a plain prefix works); the matched text names the block, or the first
capturing group when there is one. ``transformer_layer_\\d+`` makes ``transformer_layer_0``,
``transformer_layer_1`` ... one block each; ``stage2`` alone makes one block of every layer
whose name starts with it. There is no ``stage`` granularity for caller patterns: give
stage-sized patterns instead.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

from models.heads import HEAD_PREFIX

GRANULARITIES = ("block", "stage")

_Key = Callable[[re.Match], tuple]  # match -> (stage, block)


def _table(bounds: dict[int, tuple[int, int]]) -> Callable[[int], int]:
    """Stage of a block number from {stage: (first block, last block)}."""

    def stage(block: int) -> int:
        return next(s for s, (lo, hi) in bounds.items() if lo <= block <= hi)

    return stage


def _numbered(stage_of: Callable[[int], int]) -> _Key:
    def key(m):
        block = int(m.group(1) or 0)
        return stage_of(block), (block,)

    return key


def _stage_block(stage_offset: int = 0) -> _Key:
    def key(m):
        stage, block = int(m.group(1)), int(m.group(2))
        return stage + stage_offset, (stage, block)

    return key


def _convnext_downsampling(m):
    # downsampling_block_i leads into stage i + 1 (ConvNeXt's own grouping, and timm's).
    stage = int(m.group(1)) + 1
    return stage + 1, (stage, 0)


# Stage of a block number, by output resolution (see `models.applications`): 0 = the stem's.
_EFFICIENTNET_STAGE = _table({0: (1, 1), 1: (2, 2), 2: (3, 3), 3: (4, 5), 4: (6, 7)})
_MOBILENET_V2_STAGE = _table({0: (0, 0), 1: (1, 2), 2: (3, 5), 3: (6, 12), 4: (13, 16)})
_MOBILENET_V3_LARGE_STAGE = _table({0: (0, 0), 1: (1, 2), 2: (3, 5), 3: (6, 11), 4: (12, 14)})
_MOBILENET_V3_SMALL_STAGE = _table({1: (0, 0), 2: (1, 2), 3: (3, 7), 4: (8, 10)})
_XCEPTION_STAGE = _table({0: (1, 1), 2: (2, 2), 3: (3, 3), 4: (4, 12), 5: (13, 14)})
_INCEPTION_STAGE = _table({1: (0, 2), 2: (3, 7), 3: (8, 10)})


def _efficientnet(m):
    block = int(m.group(1))
    return _EFFICIENTNET_STAGE(block), (block, m.group(2))


@dataclasses.dataclass(frozen=True)
class _Family:
    name: str
    detect: str  # searched in every layer name: the family is present
    rules: tuple[tuple[str, _Key], ...]  # (pattern searched in a name, its key function)


# Tried in order; the first family detected in a model is used. Xception before VGG: both
# name blocks "block5_*", Xception alone has "sepconv" layers. MobileNetV3 large before small.
_EXPANDED_CONV = r"^expanded_conv_(?:(\d+)_)?"  # MobileNetV3; block 0 has no number
_FAMILIES = (
    _Family(
        "cifar_resnet", r"^stage\d+_block\d+_", ((r"^stage(\d+)_block(\d+)_", _stage_block()),)
    ),
    _Family(
        "convnext",
        r"_stage_\d+_block_\d+_",
        (
            (r"_stage_(\d+)_block_(\d+)_", _stage_block(1)),
            (r"_downsampling_(?:block|layernorm|conv)_(\d+)$", _convnext_downsampling),
        ),
    ),
    _Family(
        "resnet_densenet", r"^conv\d+_block\d+_", ((r"^conv(\d+)_block(\d+)_", _stage_block()),)
    ),
    _Family("efficientnet", r"^block\d+[a-z]_", ((r"^block(\d+)([a-z])_", _efficientnet),)),
    _Family(
        "mobilenet_v3_large",
        r"^expanded_conv_14_",
        ((_EXPANDED_CONV, _numbered(_MOBILENET_V3_LARGE_STAGE)),),
    ),
    _Family(
        "mobilenet_v3_small",
        r"^expanded_conv_10_",
        ((_EXPANDED_CONV, _numbered(_MOBILENET_V3_SMALL_STAGE)),),
    ),
    _Family(
        "mobilenet_v2",
        r"^block_\d+_",
        (
            (r"^block_(\d+)_", _numbered(_MOBILENET_V2_STAGE)),
            (r"^expanded_conv_()", _numbered(_MOBILENET_V2_STAGE)),  # block 0
        ),
    ),
    _Family("xception", r"^block\d+_sepconv", ((r"^block(\d+)_", _numbered(_XCEPTION_STAGE)),)),
    _Family("inception_v3", r"^mixed\d+$", ((r"^mixed(\d+)", _numbered(_INCEPTION_STAGE)),)),
    _Family("vgg", r"^block\d+_conv\d+$", ((r"^block(\d+)_", _numbered(lambda b: b - 1)),)),
)


def _user_rules(patterns: Sequence[str]) -> tuple[tuple[re.Pattern, _Key], ...]:
    rules = []
    for pattern in patterns:
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise ValueError(
                f"--layer_decay_groups: {pattern!r} is not a regular expression ({e})"
            ) from None

        def key(m, pattern=pattern):
            return None, (pattern, m.group(1) if m.re.groups else m.group(0))

        rules.append((re.compile("^(?:" + compiled.pattern + ")"), key))
    return tuple(rules)


def _family_rules(names: Sequence[str]) -> tuple[tuple[re.Pattern, _Key], ...]:
    for family in _FAMILIES:
        detect = re.compile(family.detect)
        if any(detect.search(name) for name in names):
            return tuple((re.compile(p), key) for p, key in family.rules)
    return ()


def _match(path: str, rules) -> tuple | None:
    """(stage, block) of the innermost component of `path` that a rule matches, else None."""
    for component in reversed(path.split("/")):
        for pattern, key in rules:
            m = pattern.search(component)
            if m:
                return key(m)
    return None


def _keys(paths: Sequence[str], granularity: str, rules) -> list:
    """A group key per layer, following rules 1-4 of the module docstring."""
    matched = [_match(path, rules) for path in paths]
    is_head = [path.rsplit("/", 1)[-1].startswith(HEAD_PREFIX) for path in paths]
    hits = [i for i, m in enumerate(matched) if m is not None and not is_head[i]]
    first, last = hits[0], hits[-1]
    after_last = "top" if any(is_head) else "head"
    keys, previous = [], "stem"
    for i, m in enumerate(matched):
        if is_head[i]:
            key = "head"
        elif i < first:
            key = "stem"
        elif i > last:
            key = after_last
        elif m is None:
            key = previous
        elif granularity == "stage":
            key = "stem" if m[0] == 0 else ("stage", m[0])
        else:
            key = ("block", m[1])
        keys.append(key)
        previous = key
    return keys


def _number(keys: list) -> list[int]:
    ids, seen, current = [], set(), None
    for key in keys:
        if key != current and key not in seen:  # a block that already ended stays merged
            seen.add(key)
            current = key
        ids.append(len(seen) - 1)
    return ids


def _merge_weightless(ids: list[int], weighted: Sequence[bool]) -> list[int]:
    num_groups = ids[-1] + 1
    has_weights = [False] * num_groups
    for group, w in zip(ids, weighted):
        has_weights[group] = has_weights[group] or bool(w)
    if not any(has_weights):
        return [0] * len(ids)
    # Each weightless group joins the next group with weights, or the last one with weights.
    target, nxt = list(range(num_groups)), None
    for group in reversed(range(num_groups)):
        if has_weights[group]:
            nxt = group
        target[group] = nxt
    last_weighted = max(g for g in range(num_groups) if has_weights[g])
    target = [last_weighted if t is None else t for t in target]
    renumber = {g: i for i, g in enumerate(sorted(set(target)))}
    return [renumber[target[g]] for g in ids]


def block_ids(
    layer_paths: Sequence[str],
    groups: str | Sequence[str] = "block",
    weighted: Sequence[bool] | None = None,
) -> list[int]:
    """The block (or stage) group of every layer, for block-wise layer decay.

    Args:
      layer_paths: every layer's name in the flattened layer order of
        `trainer.lr.segments.flatten_layers`, optionally prefixed by the names of its
        enclosing containers, "/"-joined (``LayerRow.scope + "/" + LayerRow.name``).
      groups: ``"block"`` or ``"stage"`` for the known families (module docstring), or a
        sequence of name patterns (regular expressions, matched at the start of a name).
      weighted: optional, per layer: whether it owns variables that can be trained. Groups
        without any then join the next group, so each group can be its own segment.

    Returns:
      One group id per layer: 0 for the stem, non-decreasing, the head's the largest, every
      id from 0 to the largest used.

    Raises:
      ValueError: an unknown granularity, a bad pattern, `weighted` of another length, or no
        layer name matching a block pattern (the message suggests patterns and
        --list_layers).
    """
    paths = list(layer_paths)
    if not paths:
        raise ValueError("--layer_decay_groups: the model has no layers")
    if weighted is not None and len(weighted) != len(paths):
        raise ValueError(f"weighted has {len(weighted)} entries for {len(paths)} layers")
    if isinstance(groups, str):
        if groups not in GRANULARITIES:
            raise ValueError(
                f"--layer_decay_groups={groups!r} is unknown; choose one of "
                f"{', '.join(GRANULARITIES)}, or give layer-name patterns"
            )
        rules, granularity = _family_rules([p.rsplit("/", 1)[-1] for p in paths]), groups
        what = "a known block pattern (ResNet, ConvNeXt, EfficientNet, ...)"
    else:
        if not groups:
            raise ValueError("--layer_decay_groups: no patterns given")
        rules, granularity = _user_rules(groups), "block"
        what = f"the patterns {', '.join(groups)}"
    if not any(
        _match(p, rules) is not None and not p.rsplit("/", 1)[-1].startswith(HEAD_PREFIX)
        for p in paths
    ):
        raise ValueError(
            f"--layer_decay_groups: no layer name matches {what}; give patterns that do "
            r"(e.g. --layer_decay_groups=encoder_layer_\d+) or see --list_layers"
        )
    ids = _number(_keys(paths, granularity, rules))
    return ids if weighted is None else _merge_weightless(ids, weighted)


def block_starts(
    layer_paths: Sequence[str],
    groups: str | Sequence[str] = "block",
    weighted: Sequence[bool] | None = None,
) -> tuple[int, ...]:
    """The flattened index of each group's first layer after group 0 (`block_ids`' groups).

    These are `split_at` indices: one segment per group. Arguments and errors as `block_ids`.
    """
    ids = block_ids(layer_paths, groups, weighted)
    return tuple(i for i in range(1, len(ids)) if ids[i] != ids[i - 1])
