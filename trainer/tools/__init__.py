"""The command-line tools.

Predict, evaluate and ensemble, with their one shared main (cli); what they share besides:
the export read and checked (export_reader), the run directory read (runs), their paths
(paths: run files, local or gs://, and output paths checked before heavy work).
"""
