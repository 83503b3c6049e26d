"""Learning on top of a backbone: the head, its Keras Tuner sweep (local or distributed), fine-tuning.

Imports ``pipeline.core``, ``pipeline.data``, ``pipeline.features``, ``pipeline.tracking`` and
``pipeline.serving`` (the head is loaded as serving loads models: ``serving.classifier.load_head``).
"""
