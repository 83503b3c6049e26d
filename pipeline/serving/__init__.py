"""Using a trained classifier: predictions on image files, the MLflow model, the registry, TFLite export.

Imports ``pipeline.core``, ``pipeline.data``, ``pipeline.features`` and ``pipeline.tracking``.
"""
