"""Learning on top of a backbone: the head, its Keras Tuner sweep (local or distributed), fine-tuning.

Imports ``pipeline.core``, ``pipeline.data``, ``pipeline.features`` and ``pipeline.tracking``.
"""
