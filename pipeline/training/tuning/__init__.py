"""The head's Keras Tuner search, in Keras Tuner's own parts: ``space`` (the search space and the
HyperModel), ``oracles`` (which trials run, known-good ones first), ``trial_log`` (each trial as an
MLflow child run and a console line), ``search`` (the tuner and the rows it fits on) and
``selection`` (the trials table, the chosen head trained again, the stage's numbers).

Distributed tuning (Keras Tuner's chief/worker mode) builds on these: see ``pipeline.training.distributed``.
"""
