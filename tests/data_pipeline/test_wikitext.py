"""Wikitext -> prose: what is kept (title, headings, paragraphs, link labels) and what goes."""

import pytest

from data_pipeline.sources.wikitext import clean_wikitext
from tests.data_pipeline.corpora import ARTICLE, ARTICLE_CLEAN


def test_fixture_article():
    assert clean_wikitext(ARTICLE, "Glimmer") == ARTICLE_CLEAN


@pytest.mark.parametrize(
    "wikitext, expected",
    [
        ("a {{x|{{y|z}}|w}} b", "a b"),  # nested templates
        ("a {{lang|fr|le texte}} b {{nowrap|c d}}", "a le texte b c d"),  # inline prose templates
        ("{{convert|3|to|5|km}} wide", "3–5 km wide"),
        ("x {| a\n|-\n| {| nested |} \n|} y", "x y"),  # nested tables
        ("[[a|b]] [[c]]s [[d#e|f]] [[:Category:G|h]] [[Foo (bar)|]]", "b cs f h Foo"),
        ("[[File:x.png|thumb|caption with [[link]]]] after", "after"),
        ("[[Image:x.png]] [[Category:Y]] [[fr:Z]] [[wikt:word|w]] text", "text"),
        ("see [http://e.org label here] and [http://bare.org]", "see label here and"),
        ("'''bold''' and ''italic'' and '''''both'''''", "bold and italic and both"),
        ("a<ref>r</ref> b<ref name=x/> c<ref name='y'>{{cite}}</ref>.", "a b c."),
        ("a <math>x^2</math> b <!-- c --> d <span style='x'>e</span>", "a b d e"),
        ("&lt;tag&gt; &amp; &nbsp;x &ndash; y", "<tag> & x – y"),
        ("__NOTOC__ text __TOC__", "text"),
        ("text (; ) more ( , ) end", "text more end"),
        ("a<br/>b<br>c", "a\nb\nc"),
        ("* one\n** two\n# three\n: four\n; five", "one\ntwo\nthree\nfour\nfive"),
        ("unclosed {{template\nstill text", "unclosed template\nstill text"),  # kept as text
        ("a {{Infobox|x={{Lang|fr|mot}}|y={{not_a_typo|z}}}} b", "a b"),  # kept inside dropped
        ("{{Not a typo|teh}} {{LANG-de|Wort}} {{nowrap}} {{small|s}}", "teh Wort s"),
        ("x {| a {{y|}} |} z", "x z"),  # a template's "|}" is not the table's end
        ("{{nowrap|2.9 billion (bn) [[barrel (unit)|barrels]]}}", "2.9 billion (bn) barrels"),
        ("{{small|[[Genitive|GEN]]}} and {{lang|de|[[Datei:x.png|thumb|Bild]]}}", "GEN and Bild"),
        ("a [[unclosed link\nb ]] c [[d|e]]]] f", "a unclosed link\nb c e f"),  # stray brackets
        ("a {| unclosed {| inner |} b", "a {| unclosed b"),  # closed tables inside still go
        ("p {| a {| b {| c |} |} |} q {| d |} r", "p q r"),
        ("a <ref>x <b>y</b> z</ref> b <REF name=n /> c <ref>open", "a b c"),
        ("a <!-- x <ref>y</ref> --> b <!-- open", "a b"),
        ("x\ty  z , w ( ) . v", "x y z, w. v"),  # spaces collapse, none before punctuation
    ],
)
def test_markup(wikitext, expected):
    assert clean_wikitext(wikitext) == expected


def test_sections():
    text = (
        "Intro.\n== A ==\nText A.\n=== A1 ===\n{{only template}}\n== B ==\nText B.\n"
        "== External links ==\n* [http://x.org x]\n=== Sub of links ===\nstill links\n"
        "== C ==\n"
    )
    # Empty sections and non-prose sections (with their subsections) go; order is kept.
    assert clean_wikitext(text, "T") == "T\n\nIntro.\n\nA\n\nText A.\n\nB\n\nText B."


def test_empty_and_title_only():
    assert clean_wikitext("{{Infobox}}\n[[Category:X]]") == ""
    assert clean_wikitext("", "Title") == ""
    assert clean_wikitext("Body", None) == "Body"
