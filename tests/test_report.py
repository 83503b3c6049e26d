"""The HTML report: a balanced, self-contained document that escapes user text and keeps Unicode."""

from __future__ import annotations

import base64
import tomllib
from collections import Counter
from fnmatch import fnmatch
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import jinja2
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image as PILImage

from pipeline.evaluation import analysis_report, scoring
from pipeline.evaluation import report as report_module
from pipeline.evaluation.report import NOTES_ID, Image, Section, Table, build_report, find_external_references
from pipeline.serving import classifier

VOID_ELEMENTS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
EVIL = "<script>alert(1)</script>"
QUOTES = "\"&'"
ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "pipeline/evaluation/templates"


class TreeChecker(HTMLParser):
    """Parses a document, asserting that every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: Counter[str] = Counter()
        self.attributes: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, list[str]] = {}
        self.doctype: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attributes.append((tag, dict(attrs)))
        if tag not in VOID_ELEMENTS:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in VOID_ELEMENTS, f"<{tag}/> does not close a non-void element in HTML"
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        assert tag not in VOID_ELEMENTS, f"end tag for void element </{tag}>"
        assert self.stack, f"</{tag}> with nothing open"
        assert self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1]}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack:
            self.text.setdefault(self.stack[-1], []).append(data)

    def values(self, attribute: str) -> list[str | None]:
        """Every value of ``attribute``, over all elements."""
        return [attrs[attribute] for _, attrs in self.attributes if attribute in attrs]


def parse(document: str) -> TreeChecker:
    """Parse ``document`` and assert it is a balanced tree."""
    checker = TreeChecker()
    checker.feed(document)
    checker.close()
    assert not checker.stack, f"left open: {checker.stack}"
    return checker


def png_bytes(size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = BytesIO()
    PILImage.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def sample_sections() -> list[Section]:
    metrics = pd.DataFrame({"class": ["cat", "dog"], "precision": [0.8123, 0.5], "support": [12000, 7]})
    return [
        Section(
            "overview", "Overview", "First paragraph.\n\nSecond paragraph.", images=(Image(png_bytes(), "A figure"),)
        ),
        Section("per-class", "Per-class metrics", tables=(Table(metrics, "Metrics by class"),)),
    ]


def report(sections: list[Section] | None = None, notes: tuple[str, ...] = (), **summary: object) -> str:
    chosen = sample_sections() if sections is None else sections
    return build_report("Flowers report", "EfficientNet-B0 head", summary or {"accuracy": 0.9}, chosen, notes)


def test_tree_checker_rejects_unbalanced_documents() -> None:
    with pytest.raises(AssertionError, match="closes"):
        parse("<div><p>text</div>")
    with pytest.raises(AssertionError, match="left open"):
        parse("<section><h2>title</h2>")
    parse("<div><img src='data:,'><br></div>")


def test_document_is_balanced_html5_with_charset_and_title() -> None:
    document = report()
    checker = parse(document)
    assert document.startswith("<!DOCTYPE html>")
    assert checker.doctype == "DOCTYPE html"
    assert checker.tags["html"] == 1 and ("html", {"lang": "en"}) in checker.attributes
    assert "utf-8" in checker.values("charset")
    assert "".join(checker.text["title"]) == "Flowers report"
    assert "".join(checker.text["h1"]) == "Flowers report"
    assert checker.tags["footer"] == 1


def test_style_is_inline_only_with_cjk_fonts_and_responsive_images() -> None:
    document = report()
    checker = parse(document)
    assert checker.tags["style"] == 1
    assert checker.tags["link"] == 0 and checker.tags["script"] == 0
    css = "".join(checker.text["style"])
    fonts = ('"Noto Sans CJK', '"PingFang', '"Microsoft YaHei"', "sans-serif")
    for needed in (*fonts, "max-width: 100%", "nth-child(even)"):
        assert needed in css
    assert "@font-face" not in css and "@import" not in css


def test_each_section_has_an_element_id_and_a_contents_link() -> None:
    checker = parse(report())
    ids, hrefs = checker.values("id"), checker.values("href")
    for section_id in ("overview", "per-class"):
        assert ids.count(section_id) == 1
        assert f"#{section_id}" in hrefs
    assert ids.index("overview") < ids.index("per-class")
    assert checker.text["p"][:3] == ["EfficientNet-B0 head", "First paragraph.", "Second paragraph."]


def test_summary_values_appear_formatted_as_cards() -> None:
    document = report(accuracy=0.8123, images=12000, backbone="EfficientNet <B0>")
    checker = parse(document)
    assert checker.text["dt"] == ["accuracy", "images", "backbone"]
    assert checker.text["dd"] == ["0.812", "12,000", "EfficientNet <B0>"]
    assert "EfficientNet &lt;B0&gt;" in document


def test_notes_section_appears_only_when_notes_are_given() -> None:
    without = parse(report())
    assert NOTES_ID not in without.values("id") and f"#{NOTES_ID}" not in without.values("href")
    assert "Notes" not in without.text["h2"]
    note = "Glyph 猫 could not be drawn in the confusion matrix"
    with_notes = parse(report(notes=(note,)))
    assert NOTES_ID in with_notes.values("id") and f"#{NOTES_ID}" in with_notes.values("href")
    assert "Notes" in with_notes.text["h2"]
    assert with_notes.text["li"][-1] == note


def test_image_is_embedded_as_a_data_uri_and_nothing_is_external() -> None:
    png = png_bytes()
    document = report()
    expected = f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}"
    checker = parse(document)
    assert checker.values("src") == [expected]
    assert ("img", {"src": expected, "alt": "A figure"}) in checker.attributes
    assert checker.text["figcaption"] == ["A figure"]
    assert find_external_references(document) == []


def test_non_png_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="not a PNG"):
        Image(b"\xff\xd8\xff\xe0 a jpeg", "photo")


def test_find_external_references_flags_urls_but_not_data_or_anchors() -> None:
    document = """<html><head><style>body { background: url(http://x) }
    .ok { background: url("data:image/png;base64,AAAA") } @import 'https://fonts/face.css';</style></head>
    <body><img src="https://x/y.png"><a href="//cdn">cdn</a><a href="#top">top</a>
    <img src="data:image/png;base64,AAAA" srcset="data:image/png;base64,AAAA 1x, https://x/2x.png 2x">
    <div style="background-image: url('https://z/bg.png')"></div>
    <link rel="stylesheet" href="style.css"><script src="app.js"></script>
    <p>the text src=http://only/mentioned is not a reference</p></body></html>"""
    assert find_external_references(document) == [
        "http://x",
        "https://fonts/face.css",
        "https://x/y.png",
        "//cdn",
        "https://x/2x.png",
        "https://z/bg.png",
        "style.css",
        "app.js",
    ]
    assert find_external_references('<a href="#a">a</a><img src="DATA:image/png;base64,AA">') == []


def test_user_text_is_escaped_never_markup() -> None:
    frame = pd.DataFrame({"class": [EVIL, "dog"], "recall": [0.5, 0.25]})
    section = Section(
        "errors",
        f"Errors {EVIL}",
        text=f"Worst class: {EVIL}",
        images=(Image(png_bytes(), f"Confusions of {EVIL}", alt=f'"{EVIL}'),),
        tables=(Table(frame, f"Table {EVIL}"),),
    )
    document = build_report(EVIL, EVIL, {EVIL: EVIL}, [section], notes=(EVIL,))
    checker = parse(document)
    assert checker.tags["script"] == 0
    assert "<script>" not in document
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert EVIL in checker.text["td"] and f"Table {EVIL}" in checker.text["caption"]
    assert checker.text["figcaption"] == [f"Confusions of {EVIL}"]
    assert f'"{EVIL}' in checker.values("alt")


def test_unicode_is_kept_verbatim_not_as_entities() -> None:
    frame = pd.DataFrame({"class": ["猫", "ノウサギ", "café"], "f1": [0.9, 0.8, 0.7]})
    section = Section(
        "classes",
        "Classes: 猫",
        images=(Image(png_bytes(), "Confusions: ノウサギ → 猫"),),
        tables=(Table(frame, "F1 for 猫 and ノウサギ"),),
    )
    document = build_report("Animals 猫", "é", {"hardest": "ノウサギ"}, [section])
    for text in ("猫", "ノウサギ", "café", "Confusions: ノウサギ → 猫", "F1 for 猫 and ノウサギ", "Animals 猫"):
        assert text in document
    assert "&#" not in document
    assert parse(document).text["td"][:2] == ["猫", "0.900"]


def test_table_cells_are_formatted_and_missing_values_shown_as_a_dash() -> None:
    frame = pd.DataFrame(
        {"name": ["a", None], "score": [0.8123, np.nan], "count": [1234567, 3], "big": [12000.0, 0.0004]}
    )
    checker = parse(report([Section("t", "T", tables=(Table(frame, "Formats"),))]))
    assert checker.text["th"] == ["name", "score", "count", "big"]
    assert checker.text["td"] == ["a", "0.812", "1,234,567", "12,000", "–", "–", "3", "4.00e-04"]
    assert ("td", {"class": "num"}) in checker.attributes


def test_named_index_is_shown_as_row_headers() -> None:
    frame = pd.DataFrame({"recall": [0.5, 1.0]}, index=pd.Index(["cat", "dog"], name="class"))
    checker = parse(report([Section("t", "T", tables=(Table(frame, "By class"),))]))
    assert checker.text["th"] == ["class", "recall", "cat", "dog"]
    assert checker.text["td"] == ["0.500", "1.000"]


@pytest.mark.parametrize(
    ("rows", "max_rows", "shown", "message"),
    [
        (120, 50, 50, "70 more rows not shown (120 in all)."),
        (120, 10, 10, "110 more rows not shown (120 in all)."),
        (50, 50, 50, None),
    ],
)
def test_long_tables_are_cut_and_say_how_many_rows_were_left_out(
    rows: int, max_rows: int, shown: int, message: str | None
) -> None:
    frame = pd.DataFrame({"row": range(rows), "value": np.linspace(0, 1, rows)})
    document = report([Section("t", "T", tables=(Table(frame, "Long", max_rows=max_rows),))])
    checker = parse(document)
    assert checker.tags["tr"] == shown + 1
    assert checker.text["td"][-2] == f"{shown - 1:,}"
    if message is None:
        assert "more rows not shown" not in document
    else:
        assert message in checker.text["p"]


@pytest.mark.parametrize("bad_id", ["", "Overview", "per_class", "has space", "é", "a/b", '"x'])
def test_bad_section_ids_raise(bad_id: str) -> None:
    with pytest.raises(ValueError, match="section id"):
        Section(bad_id, "Title")


def test_duplicate_section_ids_raise() -> None:
    sections = [Section("same", "One"), Section("other", "Two"), Section("same", "Three")]
    with pytest.raises(ValueError, match="duplicate section ids: same"):
        build_report("T", "S", {}, sections)


def test_output_is_byte_identical_across_builds() -> None:
    first = report().encode("utf-8")
    assert report().encode("utf-8") == first
    report_module._environment.cache_clear()  # a fresh Environment, as in a new process
    assert report().encode("utf-8") == first


def test_markup_and_quotes_in_titles_cells_and_captions_come_out_escaped() -> None:
    hostile = f"{EVIL} {QUOTES}"
    frame = pd.DataFrame({hostile: [hostile, "dog"], "recall": [0.5, 0.25]}, index=pd.Index([hostile, "b"], name="k"))
    section = Section("hostile", hostile, images=(Image(png_bytes(), hostile),), tables=(Table(frame, hostile),))
    document = build_report("T", "S", {}, [section])
    checker = parse(document)
    assert checker.tags["script"] == 0 and "<script>" not in document
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; &#34;&amp;&#39;"
    for element in ("h2", "caption", "figcaption"):
        assert f"<{element}" in document and f">{escaped}</{element}>" in document
    assert f"<td>{escaped}</td>" in document and f'<th scope="row">{escaped}</th>' in document
    assert f'<th scope="col">{escaped}</th>' in document and f'alt="{escaped}"' in document
    assert hostile in checker.text["h2"] and hostile in checker.text["td"] and hostile in checker.text["caption"]
    assert ("img", {"src": checker.values("src")[0], "alt": hostile}) in checker.attributes


def test_a_missing_template_value_raises_instead_of_rendering_blank() -> None:
    template = report_module._environment().get_template("report.html.j2")
    with pytest.raises(jinja2.UndefinedError, match="subtitle"):
        template.render(title="T", summary={}, contents=[], sections=(), notes=(), notes_id="n", contents_id="c")
    section_without_tables = SimpleNamespace(id="x", title="X", text="", images=())
    with pytest.raises(jinja2.UndefinedError, match="tables"):
        build_report("T", "S", {}, [section_without_tables])  # type: ignore[list-item]


def test_templates_ship_with_the_package_and_are_deps_of_the_analyze_stage() -> None:
    """pyproject's package-data puts every template in the wheel; dvc.yaml re-runs analyze when one changes."""
    templates = sorted(path.relative_to(TEMPLATES.parent).as_posix() for path in TEMPLATES.iterdir())
    assert "templates/report.html.j2" in templates and "templates/report.css" in templates
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    patterns = settings["package-data"]["pipeline.evaluation"]
    assert all(any(fnmatch(template, pattern) for pattern in patterns) for template in templates)
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["analyze"]["deps"]
    for template in templates:
        path = f"pipeline/evaluation/{template}"
        assert any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps), path


def overview_paragraphs(fine_tuning: scoring.FineTuning) -> list[str]:
    """The paragraphs of the analyze report's overview, on four test images (the fine-tuned model gets 3 right)
    and evaluate.json numbers for twelve images only the fine-tuned model got right and one only the head did."""
    predictions = classifier.predictions_frame(
        ["a.png", "b.png", "c.png", "d.png"],
        np.array([0, 0, 1, 1]),
        np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]]),
        ["cat", "dog"],
    )
    scores = {
        "finetuned": {"accuracy": 0.75, "ece": 0.1},
        "head_only": {"accuracy": 0.5, "ece": 0.2},
        # 12:1 of 13 discordant: p = 2 * (1 + 13) / 2**13 = 0.0034.
        "finetuned_vs_head": {
            "accuracy_difference": 0.25,
            "p_value": scoring.mcnemar_exact_p(12, 1),
            "only_finetuned": 12,
            "only_head": 1,
        },
    }
    section = analysis_report.overview_section(predictions, scores, analysis_report.Rendered(), 5, fine_tuning)
    return parse(build_report("Error analysis", "", {}, [section])).text["p"]


def test_the_overview_says_in_one_sentence_whether_fine_tuning_paid() -> None:
    assert (
        "Test accuracy 0.7500 (head alone 0.5000): fine-tuning +0.2500, 12 vs 1 images only one got right, "
        "McNemar p 0.0034 — it paid."
    ) in overview_paragraphs("trained")


def test_the_overview_says_fine_tuning_was_off_rather_than_compare() -> None:
    paragraphs = overview_paragraphs("off")
    assert (
        "Test accuracy 0.7500 (head alone 0.5000): fine-tuning was off (finetune.enabled: false), so the model "
        "is the head on the frozen backbone and there is nothing to compare."
    ) in paragraphs
    assert not any("McNemar" in paragraph or "paid" in paragraph for paragraph in paragraphs)
