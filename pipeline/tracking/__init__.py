"""MLflow: where the store is, one run per stage, one pipeline run per result, lineage between runs, the UI's
saved view and command.

Imports only ``pipeline.core``.
"""
