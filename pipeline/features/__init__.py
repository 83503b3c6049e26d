"""Pretrained backbones and what they see: weights, input crops and sizes, the cached feature extraction.

Imports ``pipeline.core`` and ``pipeline.data``.
"""
