"""What a run reports.

TensorBoard summaries, the metrics.json history, the progress bar, interpretation.
"""
