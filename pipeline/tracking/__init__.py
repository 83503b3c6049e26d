"""MLflow: where the store is, one run per stage, lineage between runs, the UI command.

Imports only ``pipeline.core``.
"""
