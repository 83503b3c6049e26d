"""The audit's findings as review-file entries (``pipeline/data/review.py``), for a person to accept.

One suggestion per image, the first that applies: a near-duplicate in val or test of an image in an
earlier split, or the second image of a label conflict, is excluded (the earlier split keeps its copy);
a likely label error is relabelled to the suggested class; an outlier is excluded. Each carries the
evidence as its note. The file is written with every line commented out: nothing changes until a
person copies an entry into the review file.
"""

from __future__ import annotations

import pandas as pd

from pipeline.data import review

LEAKS = ("train-test", "val-test", "train-val")
_HEADER = """\
# The audit's suggestions for {review_path}, every line commented out (docs/evaluation.md, "Data audit").
# To accept one, copy its lines into {review_path} and remove the leading "# "; `dvc repro` then re-runs
# split and everything after it. Look at each image first: a suggestion is evidence, not a verdict.
"""


def suggest(label_issues: pd.DataFrame, duplicates: pd.DataFrame, outliers: pd.DataFrame) -> list[tuple[str, list]]:
    """The suggestions by section (title, entries), one per image.

    Args:
        label_issues: ``labels.label_issues`` rows of every split.
        duplicates: ``duplicates.near_duplicates``.
        outliers: ``outliers.outliers``.
    """
    taken: set[str] = set()

    def fresh(entries: list[review.Entry]) -> list[review.Entry]:
        kept = [e for e in entries if e.path not in taken]
        taken.update(e.path for e in kept)
        return kept

    leaks = [
        review.Entry(
            row.path_b, review.EXCLUDE, note=f"near-duplicate of {row.path_a} ({row.kind}, distance {row.distance:.3f})"
        )
        for row in duplicates.itertuples()
        if row.kind in LEAKS
    ]
    conflicts = [
        review.Entry(
            row.path_b,
            review.EXCLUDE,
            note=f"near-duplicate of {row.path_a} filed as {row.label_a}, this one as {row.label_b}",
        )
        for row in duplicates.itertuples()
        if row.label_conflict and row.kind not in LEAKS
    ]
    relabels = [
        review.Entry(
            row.path,
            review.RELABEL,
            row.suggested,
            f"likely label error ({row.split}): filed as {row.label}, p({row.label}) {row.score:.2g}, "
            f"p({row.suggested}) {row.suggested_probability:.2g}",
        )
        for row in label_issues.itertuples()
    ]
    far = [
        review.Entry(
            row.path,
            review.EXCLUDE,
            note=f"outlier ({row.split}, score {row.score:.3f}): keep it if it is a {row.label}",
        )
        for row in outliers.itertuples()
    ]
    sections = [
        ("Near-duplicates across splits: the later split's copy", fresh(leaks)),
        ("Near-duplicates with different labels", fresh(conflicts)),
        ("Likely label errors, the least likely label first", fresh(relabels)),
        ("Outliers, the farthest from the training images first", fresh(far)),
    ]
    return [(title, entries) for title, entries in sections]


def suggestions_text(sections: list[tuple[str, list]], review_path: str) -> str:
    """The suggestions file: a header, then each section's entries commented out."""
    parts = [_HEADER.format(review_path=review_path)]
    for title, entries in sections:
        parts.append(f"\n# --- {title}: {len(entries)} ---\n")
        parts.append(review.format_entries(entries, commented=True))
    return "".join(parts)
