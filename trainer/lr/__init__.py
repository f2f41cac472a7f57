"""Learning-rate machinery.

Segments of layers, the segment table, the segmented optimizer, the guarded private Keras API.
"""
