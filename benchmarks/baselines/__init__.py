"""The reference classifiers the accuracy benchmarks compare the pipeline with: a logistic regression on the
same cached features (``logistic_regression``) and a small CNN trained from scratch (``scratch_cnn``).

Models, not benchmarks: they import only the pipeline, and any benchmark may use them.
"""
