"""The report's data sections: the audit stage's lists (label errors, near-duplicates, outliers,
overlapping classes) as thumbnails and tables, beside the model's own confusions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.audit import duplicates
from pipeline.data import images
from pipeline.evaluation import gallery, report

Draw = Callable[[str, Any, str], report.Image]  # analysis_report.Rendered.add
THUMBNAIL_PX = 160


def _thumbnails(root: Path, paths: pd.Series) -> list[np.ndarray]:
    return [images.load_thumbnail(root / p, THUMBNAIL_PX) for p in paths]


def label_issue_section(
    issues: pd.DataFrame, sizes: dict[str, int], draw: Draw, root: Path, shown: int
) -> report.Section:
    """Likely label errors: counts per split, the least likely labels as thumbnails (given → suggested), the list.

    Args:
        issues: reports/label_issues.csv.
        sizes: images per split (the rates' denominators).
        draw: renders a figure into the report.
        root: the repository root the paths are relative to.
        shown: thumbnails at most.
    """
    counts = pd.DataFrame(
        [
            {
                "split": name,
                "images": n,
                "likely label errors": int((issues["split"] == name).sum()),
                "share": round(float((issues["split"] == name).sum()) / n, 4) if n else 0.0,
            }
            for name, n in sizes.items()
        ]
    )
    text = (
        "Confident learning (cleanlab) compares each image's given label with out-of-sample probabilities: "
        "cross-validated for the train split, the head's for val and test, so no image is judged by a model that "
        "trained on it. Listed are the images whose given label the evidence contradicts, the least likely first "
        "(score: the probability of the given label). Many are mislabelled; some are ambiguous or hard. Accept a "
        "suggestion by copying it from reports/review_suggestions.yaml into the review file."
    )
    if issues.empty:
        return report.Section(
            "label-issues", "Likely label errors", text, tables=(report.Table(counts, "Likely label errors per split"),)
        )
    top = issues.head(shown)
    captions = [
        f"{row.split}: given {row.label}\n→ {row.suggested} ({row.suggested_probability:.2f})"
        for row in top.itertuples()
    ]
    grid = draw(
        "label_issues",
        gallery.image_grid(_thumbnails(root, top["path"]), captions, f"The {len(top)} least likely given labels", 6),
        "Likely label errors: the split, the given label and the suggested one with its probability.",
    )
    return report.Section(
        "label-issues",
        "Likely label errors",
        text,
        images=(grid,),
        tables=(
            report.Table(counts, "Likely label errors per split"),
            report.Table(issues, "Likely label errors, the least likely given label first"),
        ),
    )


def duplicate_section(
    pairs: pd.DataFrame, threshold: float, source: str, draw: Draw, root: Path, shown: int
) -> report.Section:
    """Near-duplicates: counts per kind (leaks across splits first), the closest pairs side by side, the list."""
    counts = pd.DataFrame(
        [
            {
                "kind": kind,
                "pairs": int((pairs["kind"] == kind).sum()),
                "label conflicts": int(((pairs["kind"] == kind) & pairs["label_conflict"]).sum()),
                "identical files": int(((pairs["kind"] == kind) & pairs["identical_file"]).sum()),
            }
            for kind in duplicates.KINDS
        ]
    )
    leaks = pairs[pairs["kind"].isin(("train-test", "val-test", "train-val"))]
    text = (
        f"Pairs of images whose features lie closer than a cosine distance of {threshold:g} ({source}): resized, "
        "re-encoded, flipped or cropped copies that the split stage's sha256 check cannot see. A copy of a training "
        f"image in val or test inflates their scores: {len(leaks)} pair(s) cross splits here. A pair filed under "
        "two classes is a label conflict: at most one of the labels is right."
    )
    tables = (
        report.Table(counts, "Near-duplicate pairs by kind"),
        report.Table(pairs, "Near-duplicate pairs, leaks first"),
    )
    if pairs.empty:
        return report.Section("near-duplicates", "Near-duplicates and leakage", text, tables=tables)
    ordered = pd.concat(
        [leaks, pairs[pairs["label_conflict"] & ~pairs.index.isin(leaks.index)], pairs]
    ).drop_duplicates()
    top = ordered.head(shown)
    captions = [
        f"{row.kind}, distance {row.distance:.3f}\n{row.label_a} | {row.label_b}"
        + (" (conflict)" if row.label_conflict else "")
        for row in top.itertuples()
    ]
    grid = draw(
        "near_duplicates",
        gallery.pair_grid(
            _thumbnails(root, top["path_a"]),
            _thumbnails(root, top["path_b"]),
            captions,
            "Near-duplicate pairs",
            ("a", "b"),
            4,
        ),
        "Near-duplicate pairs side by side: leaks across splits first, then label conflicts.",
    )
    return report.Section("near-duplicates", "Near-duplicates and leakage", text, images=(grid,), tables=tables)


def outlier_section(far: pd.DataFrame, limit: float, k: int, draw: Draw, root: Path, shown: int) -> report.Section:
    """Outliers: images far from every training image, the farthest first."""
    text = (
        f"An image's score is its mean cosine distance to its {k} nearest training images; above {limit:.3f} "
        "(Q3 + 1.7 × IQR of the training images' own scores, cleanlab's rule) it is an outlier. A test image far "
        "from all training images tests something the model never saw; a training outlier may be a wrong file, a "
        "placeholder, or a rare kind of its class worth more examples."
    )
    if far.empty:
        return report.Section("outliers", "Outliers", text + " None is over the limit.")
    top = far.head(shown)
    captions = [f"{row.split}: {row.label}\nscore {row.score:.3f}" for row in top.itertuples()]
    grid = draw(
        "outliers",
        gallery.image_grid(_thumbnails(root, top["path"]), captions, f"The {len(top)} farthest images", 6),
        "Outliers: the images farthest from the training images.",
    )
    return report.Section(
        "outliers", "Outliers", text, images=(grid,), tables=(report.Table(far, "Outliers, the farthest first"),)
    )


def overlap_section(overlapping: pd.DataFrame, confused: pd.DataFrame) -> report.Section:
    """Class pairs the data itself mixes (cleanlab) next to the pairs the model confuses on test."""
    return report.Section(
        "overlapping-classes",
        "Overlapping classes",
        "Pairs of classes whose images the data itself does not keep apart: cleanlab's estimate, from the train "
        "split's out-of-sample probabilities, of how many images filed under one belong to the other (either way). "
        "When the same pairs top the model's confusions, more training will not separate them; clearer labelling "
        "rules or merging the classes might.",
        tables=(
            report.Table(overlapping, "Overlapping classes (train split, cleanlab)", max_rows=15),
            report.Table(confused, "The model's most-confused pairs (test split)", max_rows=15),
        ),
    )
