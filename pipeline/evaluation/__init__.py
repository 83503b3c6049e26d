"""Judging a classifier: scores with intervals, calibration, error analysis, Grad-CAM, figures, the report.

Imports ``pipeline.core``, ``pipeline.data``, ``pipeline.features`` and ``pipeline.serving``.
"""
