"""The review file: its format, its checks (each naming the entry), and the split stage obeying it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.errors import UserError
from pipeline.data import review
from pipeline.data.split import Item

GOOD = """\
# a comment
- path: data/raw/cat/img000.png
  exclude: true
  note: not a cat
- path: data/raw/cat/img001.png
  relabel: dog
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "review.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_entries_read_and_write_in_the_same_format(tmp_path):
    entries = review.read_review(write(tmp_path, GOOD))
    assert entries == [
        review.Entry("data/raw/cat/img000.png", "exclude", None, "not a cat"),
        review.Entry("data/raw/cat/img001.png", "relabel", "dog", None),
    ]
    assert review.read_review(write(tmp_path, review.format_entries(entries))) == entries
    commented = review.format_entries(entries, commented=True)
    assert all(line.startswith("# ") for line in commented.splitlines())
    assert review.read_review(write(tmp_path, commented)) == []  # commented out: no decision yet
    uncommented = "".join(line[2:] + "\n" for line in commented.splitlines())
    assert review.read_review(write(tmp_path, uncommented)) == entries


def test_a_missing_or_comment_only_file_is_no_decisions(tmp_path):
    assert review.read_review(tmp_path / "absent.yaml") == []
    assert review.read_review(write(tmp_path, "# nothing yet\n")) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path: x\n", "must be a list"),
        ("- path: a.png\n  exclude: true\n  relabel: dog\n", "entry 1 (a.png): give exactly one of"),
        ("- path: a.png\n", "entry 1 (a.png): give exactly one of"),
        ("- path: a.png\n  exclude: false\n", "entry 1 (a.png): 'exclude' takes only true"),
        ("- path: a.png\n  exclude: true\n- path: b.png\n  relable: dog\n", "entry 2 (b.png): unknown key(s) relable"),
        ("- exclude: true\n", "entry 1: needs 'path'"),
        ("- path: a.png\n  exclude: true\n- path: a.png\n  relabel: dog\n", "entry 2 (a.png) repeats entry 1"),
        ("- path: [a\n", "not valid YAML"),
    ],
)
def test_a_malformed_entry_is_refused_by_number_and_path(tmp_path, text, message):
    with pytest.raises(UserError, match="review.yaml") as caught:
        review.read_review(write(tmp_path, text))
    assert message in str(caught.value)


def test_entries_must_name_an_existing_image_and_class():
    known = ["data/raw/cat/a.png", "data/raw/dog/b.png"]
    review.check_entries([review.Entry("data/raw/cat/a.png", "relabel", "dog")], known, ["cat", "dog"], "r.yaml")
    with pytest.raises(UserError, match=r"r.yaml: entry 2 \(data/raw/cat/c.png\): no such image"):
        review.check_entries(
            [review.Entry("data/raw/cat/a.png", "exclude"), review.Entry("data/raw/cat/c.png", "exclude")],
            known,
            ["cat", "dog"],
            "r.yaml",
        )
    with pytest.raises(
        UserError, match=r"entry 1 \(data/raw/cat/a.png\): 'relabel: cow' is not a class; the classes are cat, dog"
    ):
        review.check_entries([review.Entry("data/raw/cat/a.png", "relabel", "cow")], known, ["cat", "dog"], "r.yaml")


def test_applying_excludes_and_relabels_and_records_what_it_did():
    items = [Item("a.png", "cat", "1"), Item("b.png", "cat", "2"), Item("c.png", "dog", "3")]
    kept, applied = review.apply_entries(
        items, [review.Entry("a.png", "exclude", note="blurred"), review.Entry("b.png", "relabel", "dog")]
    )
    assert kept == [Item("b.png", "dog", "2"), Item("c.png", "dog", "3")]
    assert applied == [
        {"path": "a.png", "action": "exclude", "label": "cat", "note": "blurred"},
        {"path": "b.png", "action": "relabel", "label": "cat", "relabelled_to": "dog"},
    ]


def test_split_stage_obeys_the_review_file_and_stops_on_a_bad_entry(project, image_tree):
    image_tree(project.root.parent / "source", {"cat": 6, "dog": 6})
    project.stage("download")
    decisions = (
        "- path: data/raw/cat/img000.png\n  exclude: true\n  note: a blurred cat\n"
        "- path: data/raw/cat/img001.png\n  relabel: dog\n"
    )
    (project.root / "data/review.yaml").write_text(decisions, encoding="utf-8")
    result = project.stage("split")
    assert "data/review.yaml: excluded: data/raw/cat/img000.png" in result.stdout
    assert "data/review.yaml: relabelled cat → dog: data/raw/cat/img001.png" in result.stdout
    rows = pd.concat([pd.read_csv(project.root / f"data/splits/{s}.csv") for s in ("train", "val", "test")])
    assert "data/raw/cat/img000.png" not in set(rows["path"])
    assert rows.set_index("path").loc["data/raw/cat/img001.png", "label"] == "dog"
    report = json.loads((project.root / "data/splits/report.json").read_text(encoding="utf-8"))
    assert report["review"]["excluded"] == 1 and report["review"]["relabelled"] == 1
    assert report["review"]["applied"][0]["note"] == "a blurred cat"
    metrics = json.loads((project.root / "metrics/split.json").read_text(encoding="utf-8"))
    assert metrics["review_excluded"] == 1 and metrics["review_relabelled"] == 1

    before = (project.root / "data/splits/train.csv").read_bytes()
    (project.root / "data/review.yaml").write_text(decisions + "- path: data/raw/cow/img000.png\n  exclude: true\n")
    refused = project.stage("split", check=False)
    assert refused.returncode == 2
    assert "data/review.yaml: entry 3 (data/raw/cow/img000.png): no such image in the raw data" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (project.root / "data/splits/train.csv").read_bytes() == before  # nothing written
