"""The audit's parts on synthetic features with known answers: flipped labels, planted copies, outliers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import KNeighborsClassifier

from pipeline.audit import duplicates, labels, neighbours, outliers, probabilities, suggestions
from pipeline.data import review
from pipeline.features.extraction import FeatureSet


def blobs(n: int, classes: int, width: int, seed: int, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Separable clusters: one random centre per class, Gaussian noise around it."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, width)) * 4
    y = np.repeat(np.arange(classes), n // classes)
    return (centres[y] + rng.normal(size=(len(y), width)) * spread).astype(np.float32), y


def feature_set(features: np.ndarray, y: np.ndarray, split: str, classes: int) -> FeatureSet:
    paths = np.array([f"data/raw/{split}/{i:05d}.png" for i in range(len(y))])
    return FeatureSet(
        features,
        y.astype(np.int32),
        paths,
        np.array([f"h{split}{i}" for i in range(len(y))]),
        tuple(f"c{i}" for i in range(classes)),
    )


def test_five_percent_flipped_labels_are_found_with_precision_and_recall_of_at_least_0_8():
    features, y = blobs(2000, 5, 32, seed=0, spread=3.0)
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(y), size=len(y) // 20, replace=False)
    given = y.copy()
    given[flipped] = (y[flipped] + rng.integers(1, 5, size=len(flipped))) % 5
    probs = probabilities.out_of_fold_probabilities(features, given, 5, folds=5, seed=0)
    assert probs.shape == (2000, 5) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    found = labels.label_issues(np.arange(len(y)).astype(str), given, probs, [f"c{i}" for i in range(5)], "train")
    flagged = set(found["path"].astype(int))
    truth = set(flipped.tolist())
    precision, recall = len(flagged & truth) / len(flagged), len(flagged & truth) / len(truth)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    # Ranked by self-confidence, the least likely given label first; the suggestion is the true class.
    assert list(found["score"]) == sorted(found["score"])
    hits = found[found["path"].astype(int).isin(truth)]
    assert (hits["suggested"] == [f"c{y[int(p)]}" for p in hits["path"]]).mean() > 0.9


def test_no_train_probability_comes_from_a_model_that_saw_the_image():
    # A 1-nearest-neighbour classifier remembers every image it was fitted on: had a row been in its own
    # fold's fit, it would be its own neighbour and get its own (random) label with probability 1.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 8)).astype(np.float32)
    y = rng.integers(0, 4, size=400)
    probs = probabilities.out_of_fold_probabilities(
        features, y, 4, folds=5, seed=0, make_classifier=lambda: KNeighborsClassifier(1)
    )
    agreement = float((probs.argmax(axis=1) == y).mean())
    assert agreement < 0.4  # chance is 0.25; seen rows would give 1.0
    leaked = KNeighborsClassifier(1).fit(features, y).predict(features)
    assert (leaked == y).mean() == 1.0  # the same classifier, shown the rows: the test can tell


def test_a_class_missing_from_a_fold_gets_probability_zero_there_and_rows_still_sum_to_one():
    features, y = blobs(60, 3, 8, seed=2)
    y = np.concatenate([y, [3]])  # one image of a fourth class: some fold trains without it
    features = np.concatenate([features, features[:1] + 50])
    probs = probabilities.out_of_fold_probabilities(features, y, 4, folds=5, seed=0)
    assert probs.shape == (61, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert probs[-1, 3] == 0  # its only image was held out when its class was missing


def test_folds_with_no_more_images_than_classes_still_give_probabilities():
    features, y = blobs(6, 3, 8, seed=9)  # two images per class: each fold trains on 3 images of 3 classes
    probs = probabilities.out_of_fold_probabilities(features, y, 3, folds=2, seed=0)
    assert probs.shape == (6, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (probs.argmax(axis=1) == y).mean() >= 0.5  # separable clusters: the fallback still learns


def test_temperature_undoes_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=3000)
    true_logits = rng.normal(size=(3000, 3))
    true_logits[np.arange(3000), y] += 1.0
    log_probs = np.log(np.exp(true_logits * 5) / np.exp(true_logits * 5).sum(1, keepdims=True))
    assert probabilities.fit_temperature(log_probs, y) == pytest.approx(5.0, rel=0.2)


def test_overlapping_classes_name_the_pair_the_data_mixes():
    features, y = blobs(900, 3, 16, seed=3, spread=1.0)
    features[y == 2] = features[y == 1][: (y == 2).sum()] + np.random.default_rng(4).normal(size=(300, 16)) * 0.5
    probs = probabilities.out_of_fold_probabilities(features, y, 3, folds=5, seed=0)
    found = labels.overlapping_classes(y, probs, ["a", "b", "c"])
    assert {found.loc[0, "class_a"], found.loc[0, "class_b"]} == {"b", "c"}
    assert found.loc[0, "overlapping_images"] > 100


def test_projected_search_finds_the_exact_neighbours(monkeypatch):
    features, _ = blobs(3000, 20, 256, seed=5, spread=1.0)
    unit = neighbours.unit_rows(features)
    exact = neighbours.nearest(unit[:500], unit, 5)
    monkeypatch.setattr(neighbours, "EXACT_BUDGET", 0)
    projected = neighbours.nearest(unit[:500], unit, 5)
    assert (projected.indices[:, 0] == exact.indices[:, 0]).mean() > 0.99
    assert np.allclose(np.sort(projected.distances, axis=1)[:, 0], exact.distances[:, 0], atol=1e-5)
    same = neighbours.nearest(unit[:500], unit[:500], 3, np.arange(500))
    assert not (same.indices == np.arange(500)[:, None]).any()


def planted_splits(seed: int = 6) -> tuple[dict[str, FeatureSet], list[tuple[str, int, str, int]]]:
    """Distinct images in three splits, then copies (tiny changes) planted across and within splits."""
    rng = np.random.default_rng(seed)
    sets, width = {}, 64
    for name, n in (("train", 200), ("val", 40), ("test", 40)):
        features = np.abs(rng.normal(size=(n, width))).astype(np.float32)
        sets[name] = feature_set(features, rng.integers(0, 3, size=n), name, 3)
    plants = [("train", 3, "test", 7), ("train", 10, "val", 2), ("val", 5, "test", 11), ("train", 20, "train", 30)]
    for source, row, target, slot in plants:
        s, t = sets[source], sets[target]
        t.features[slot] = s.features[row] * 1.5 + np.abs(rng.normal(size=width)).astype(np.float32) * 0.02
    for source, row, target, slot in plants:
        sets[target].labels[slot] = sets[source].labels[row]
    sets["test"].labels[7] = (sets["train"].labels[3] + 1) % 3  # the train-test copy disagrees on its label
    return sets, plants


def test_every_planted_copy_is_found_under_its_kind_and_no_distinct_pair_is():
    sets, plants = planted_splits()
    graph = neighbours.build_graph({name: s.features for name, s in sets.items()}, 10)
    found = duplicates.near_duplicates(graph, sets, threshold=0.01)
    expected = {
        (f"within {a}" if a == b else f"{a}-{b}", str(sets[a].paths[i]), str(sets[b].paths[j])) for a, i, b, j in plants
    }
    assert set(zip(found["kind"], found["path_a"], found["path_b"], strict=True)) == expected
    conflicts = found[found["label_conflict"]]
    assert list(conflicts["path_b"]) == [str(sets["test"].paths[7])]
    assert not found["identical_file"].any()
    assert list(found["kind"]) == sorted(found["kind"], key=duplicates.KINDS.index)


def test_thresholds_come_from_the_calibrated_table_or_the_param():
    assert duplicates.choose_threshold("auto", "efficientnet_lite0", 0.5) == (
        0.10,
        "calibrated for efficientnet_lite0 with planted copies",
    )
    assert duplicates.choose_threshold("auto", "resnet50", 0.5)[0] == duplicates.UNCALIBRATED_THRESHOLD
    assert duplicates.choose_threshold(0.05, "efficientnet_lite0", 0.01) == (0.05, "audit.duplicate_threshold")
    # A set of look-alike images (median nearest-neighbour distance 0.1): auto stays well under it.
    threshold, source = duplicates.choose_threshold("auto", "efficientnet_lite2", 0.1)
    assert threshold == pytest.approx(0.03) and "median nearest-neighbour distance 0.100" in source


def test_a_planted_outlier_is_ranked_first_and_typical_images_are_not_listed():
    features, y = blobs(600, 3, 32, seed=7, spread=1.0)
    test_features, test_y = blobs(60, 3, 32, seed=7, spread=1.0)
    test_features[13] = np.random.default_rng(8).normal(size=32) * 10  # far from every cluster
    sets = {
        "train": feature_set(np.abs(features), y, "train", 3),
        "test": feature_set(np.abs(test_features), test_y, "test", 3),
    }
    graph = neighbours.build_graph({n: s.features for n, s in sets.items()}, 10)
    found, limit = outliers.outliers(graph, sets, 10)
    assert found.loc[0, "path"] == str(sets["test"].paths[13]) and found.loc[0, "score"] > limit
    assert (found["split"] == "test").sum() <= 3  # the rest of test is as typical as train
    assert limit == pytest.approx(outliers.outlier_limit(outliers.outlier_scores(graph, 10)["train"]))


def test_suggestions_are_one_per_image_and_read_back_as_review_entries(tmp_path):
    issues = pd.DataFrame(
        [["data/raw/a.png", "train", "cat", "dog", 0.01, 0.97], ["data/raw/b.png", "test", "dog", "cat", 0.02, 0.9]],
        columns=labels.COLUMNS,
    )
    pairs = pd.DataFrame(
        [["train-test", "data/raw/c.png", "cat", "data/raw/b.png", "dog", 0.01, True, False]],
        columns=duplicates.COLUMNS,
    )
    far = pd.DataFrame([["data/raw/a.png", "train", "cat", 0.5, "data/raw/c.png", 0.4]], columns=outliers.COLUMNS)
    sections = suggestions.suggest(issues, pairs, far)
    entries = [e for _, section in sections for e in section]
    assert [(e.path, e.action, e.label) for e in entries] == [
        ("data/raw/b.png", "exclude", None),  # the test copy of a train image goes, before its label issue
        ("data/raw/a.png", "relabel", "dog"),  # a label issue comes before the same image as an outlier
    ]
    text = suggestions.suggestions_text(sections, "data/review.yaml")
    assert all(line.startswith("#") for line in text.splitlines() if line.strip())
    accepted = "".join(
        line[2:] + "\n" for line in text.splitlines() if line.startswith("# - ") or line.startswith("#   ")
    )
    (tmp_path / "review.yaml").write_text(accepted, encoding="utf-8")
    assert review.read_review(tmp_path / "review.yaml") == entries
