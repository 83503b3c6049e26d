"""The data-centric audit: which of the model's mistakes are the data's.

Everything here works on the cached features (``data/features/*.npz``), never on images:
out-of-sample probabilities (``probabilities``), likely label errors and overlapping classes with
cleanlab (``labels``), nearest neighbours over L2-normalised features (``neighbours``), near-duplicates
and leakage across splits (``duplicates``), outliers (``outliers``) and the review-file entries that
would act on all of these (``suggestions``).
"""
