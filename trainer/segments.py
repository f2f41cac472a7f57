"""`trainer.segments`, the design card's public path of `trainer.lr.segments`.

segment_of = trainer.segments.assign(model, split_at)
"""

from trainer.lr.segments import (  # noqa: F401
    LayerRow,
    assign,
    flatten_layers,
    format_layer_table,
    freeze,
    layer_rows,
    layer_segments,
)
