"""Charts and image grids: legible with many classes, labelled, and honest about glyphs no font can draw."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, fontManager
from matplotlib.ft2font import FT2Font
from matplotlib.text import Text

from pipeline.core import figures
from pipeline.evaluation import charts, gallery

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES_60 = [f"class {i:02d} {['northern', 'spotted', 'lesser'][i % 3]} longish name" for i in range(60)]


def draw(figure: Figure) -> object:
    """Draw with the Agg canvas and return its renderer."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def chart_axes(figure: Figure) -> list:
    """The figure's axes without its colorbars."""
    return [axes for axes in figure.axes if axes.get_label() != "<colorbar>"]


def texts(figure: Figure) -> list[str]:
    """Every text drawn in the figure, subfigures included."""
    return [text.get_text() for text in figure.findobj(Text) if text.get_visible()]


def assert_labelled(figure: Figure) -> None:
    """A title on the figure or every axes, and both axis labels on every axes."""
    for axes in chart_axes(figure):
        assert figure.get_suptitle() or axes.get_title(), "no title"
        assert axes.get_xlabel() and axes.get_ylabel(), f"unlabelled axes {axes.get_title()!r}"


def assert_no_overlapping_tick_labels(figure: Figure, expected: int | None = None) -> None:
    """Visible tick labels of each axis never overlap one another and lie inside the figure."""
    renderer = draw(figure)
    for axes, axis in itertools.product(chart_axes(figure), ("x", "y")):
        labels = [t for t in getattr(axes, f"get_{axis}ticklabels")() if t.get_visible() and t.get_text()]
        boxes = [label.get_window_extent(renderer) for label in labels]
        for (a, box_a), (b, box_b) in itertools.combinations(zip(labels, boxes, strict=True), 2):
            assert not box_a.overlaps(box_b), f"{a.get_text()!r} overlaps {b.get_text()!r}"
        for label, box in zip(labels, boxes, strict=True):
            assert figure.bbox.contains(box.x0, box.y0) and figure.bbox.contains(box.x1, box.y1), label.get_text()
        if expected is not None and axes.get_title().startswith("Row-normalised"):
            assert len(labels) == expected


def font_has_glyph(character: str) -> bool:
    """Whether a font that the charts fall back on maps the character (checked independently of figures)."""
    paths = {fontManager.findfont(FontProperties(family=name)) for name in figures.font_families()}
    return any(ord(character) in FT2Font(path).get_charmap() for path in paths)


def random_confusion(classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 5, size=(classes, classes)) + np.diag(rng.integers(10, 40, size=classes))


def test_per_class_accuracy_with_60_classes_has_no_overlapping_labels() -> None:
    accuracy = np.random.default_rng(1).uniform(0, 1, size=60)
    figure = charts.per_class_accuracy_chart(NAMES_60, accuracy, [20] * 60)
    assert_labelled(figure)
    assert_no_overlapping_tick_labels(figure)
    assert len([t for t in figure.axes[0].get_yticklabels() if t.get_text()]) == 60


def test_per_class_accuracy_puts_the_worst_class_at_the_top() -> None:
    names = ["bee", "ant", "wasp", "moth", "fly"]
    accuracy = [0.9, 0.2, 1.0, 0.55, float("nan")]
    figure = charts.per_class_accuracy_chart(names, accuracy, [10, 5, 8, 20, 0])
    renderer = draw(figure)
    labels = figure.axes[0].get_yticklabels()
    top_to_bottom = sorted(labels, key=lambda t: -t.get_window_extent(renderer).y0)
    assert [t.get_text() for t in top_to_bottom] == ["ant", "moth", "bee", "wasp", "fly"]
    assert {"20% (n=5)", "100% (n=8)", "no test images"} <= set(texts(figure))


def test_confusion_matrix_with_60_classes_is_one_heatmap_without_cell_text() -> None:
    figure = charts.confusion_matrix_chart(random_confusion(60), NAMES_60)
    assert_labelled(figure)
    assert_no_overlapping_tick_labels(figure, expected=60)
    assert all(not axes.texts for axes in figure.axes)
    assert any(axes.get_label() == "<colorbar>" for axes in figure.axes)
    assert "test images" in figure.get_suptitle() and "normalised" in figure.axes[0].get_title().lower()


def test_confusion_matrix_with_very_many_classes_labels_every_nth_and_says_so() -> None:
    names = [f"species {i:03d}" for i in range(130)]
    figure = charts.confusion_matrix_chart(random_confusion(130), names)
    assert_no_overlapping_tick_labels(figure, expected=65)
    assert "one class in 2 labelled" in figure.axes[0].get_title()


def test_small_confusion_matrix_annotates_counts_and_rates_readably() -> None:
    confusion = np.array([[7, 3, 0], [1, 8, 1], [0, 2, 18]])
    figure = charts.confusion_matrix_chart(confusion, ["ant", "bee", "wasp"])
    assert_labelled(figure)
    assert_no_overlapping_tick_labels(figure)
    counts, rates = figure.axes
    assert {t.get_text() for t in counts.texts} == {"7", "3", "0", "1", "8", "2", "18"}
    assert {t.get_text() for t in rates.texts} == {"70%", "30%", "0%", "10%", "80%", "90%"}
    colour = {t.get_text(): t.get_color() for t in rates.texts}
    assert colour["90%"] == "white" and colour["0%"] == "black"
    assert "40 test images" in figure.get_suptitle()


def test_confusion_matrix_rejects_a_shape_that_does_not_match_the_classes() -> None:
    with pytest.raises(ValueError, match="3 classes"):
        charts.confusion_matrix_chart(np.zeros((2, 2)), ["a", "b", "c"])


def test_unicode_class_names_render_or_are_reported_missing() -> None:
    names = ["猫", "ノウサギ", "dog"]
    figure = charts.confusion_matrix_chart(np.array([[5, 1, 0], [0, 4, 2], [1, 0, 6]]), names)
    png, missing = figures.to_png(figure)
    assert png.startswith(PNG_SIGNATURE)
    # All of them with DejaVu only; none once a CJK font such as WenQuanYi Zen Hei is installed.
    expected = {c for c in "猫ノウサギ" if not font_has_glyph(c)}
    assert missing == figures.missing_glyphs(names) == expected
    assert figures.to_png(figure)[1] == missing  # a second rendering reports the same
    assert figures.missing_glyphs("dog") == frozenset()
    assert figures.missing_glyphs(["a b\n"]) == frozenset()


def test_a_dollar_in_a_class_name_is_drawn_literally() -> None:
    figure = charts.per_class_accuracy_chart(["$5 note", "$10 note"], [0.5, 0.9], [4, 4])
    png, _ = figures.to_png(figure)
    assert png.startswith(PNG_SIGNATURE)


def test_curves_chart_shows_auc_and_ap() -> None:
    roc = (np.array([0.0, 0.0, 0.5, 1.0]), np.array([0.0, 0.5, 1.0, 1.0]))
    pr = (np.array([0.5, 0.667, 1.0, 1.0]), np.array([1.0, 1.0, 0.5, 0.0]))
    figure = charts.curves_chart(roc, 0.875, pr, 0.8333, positive="cat")
    draw(figure)
    assert_labelled(figure)
    roc_axes, pr_axes = figure.axes
    assert "0.875" in roc_axes.get_title() and "0.833" in pr_axes.get_title()
    assert any("0.875" in t.get_text() for t in roc_axes.get_legend().get_texts())
    assert all(axes.get_xlim() == (0, 1) and axes.get_ylim() == (0, 1) for axes in figure.axes)
    assert "cat" in figure.get_suptitle()


def test_reliability_chart_handles_an_empty_bin_and_shows_ece() -> None:
    edges = np.linspace(0, 1, 5)
    stats = [(0, np.nan, np.nan), (3, 0.4, 0.33), (10, 0.62, 0.5), (25, 0.9, 0.96)]
    bins = [
        {"lower": lo, "upper": hi, "count": n, "confidence": conf, "accuracy": acc}
        for lo, hi, (n, conf, acc) in zip(edges[:-1], edges[1:], stats, strict=True)
    ]
    figure = charts.reliability_chart(bins, ece=0.0421)
    draw(figure)
    assert_labelled(figure)
    main, counts = figure.axes
    assert "ECE = 0.042" in main.get_title()
    assert [round(p.get_height()) for p in counts.patches] == [0, 3, 10, 25]


def test_confidence_histogram_works_without_wrong_predictions() -> None:
    confidence = np.random.default_rng(2).uniform(0.5, 1, size=12)
    figure = charts.confidence_histogram(confidence, np.ones(12, dtype=bool))
    draw(figure)
    assert_labelled(figure)
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == ["correct (12)", "wrong (0)"]
    assert figure.axes[0].get_xlim() == (0, 1)


def images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(count)
    return [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("count", [1, 7])
def test_image_grid_shows_every_caption(count: int) -> None:
    captions = [f"true: cat {i}\npred: dog (0.9{i})" for i in range(count)]
    figure = gallery.image_grid(images(count), captions, title="Most confident mistakes", columns=5)
    draw(figure)
    assert len(figure.axes) == count
    assert set(captions) <= set(texts(figure))
    assert figure.get_suptitle() == "Most confident mistakes"
    assert all(not axes.get_xticks().size and not axes.get_yticks().size for axes in figure.axes)


@pytest.mark.parametrize("count", [1, 7])
def test_heatmap_grid_pairs_each_image_with_its_overlay(count: int) -> None:
    captions = [f"true: ノウサギ {i}\npred: hare" for i in range(count)]
    figure = gallery.heatmap_grid(images(count), images(count), captions, title="Grad-CAM", columns=5)
    png, missing = figures.to_png(figure)
    assert png.startswith(PNG_SIGNATURE) and missing == figures.missing_glyphs(captions)
    assert len(figure.axes) == 2 * count
    assert set(captions) <= set(texts(figure))
    assert figure.get_suptitle() == "Grad-CAM"


def test_grids_refuse_mismatched_captions() -> None:
    with pytest.raises(ValueError, match="caption"):
        gallery.image_grid(images(2), ["only one"], title="x")
