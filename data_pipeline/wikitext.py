"""Wikitext -> clean prose: what a MediaWiki article says, without its markup.

`clean_wikitext(text, title)` keeps the title, section titles and paragraphs (as blocks separated
by a blank line) and removes:

- HTML comments, `<ref>` citations, and the content of tags that are not prose (`<math>`,
  `<gallery>`, `<timeline>`, `<syntaxhighlight>`, `<table>`, ...); other tags lose their markup;
- templates `{{...}}` at any nesting depth (a few inline ones whose text is prose, such as
  `{{lang|fr|texte}}`, `{{nowrap|...}}` or `{{convert|5|km}}`, are replaced by their text);
- tables `{| ... |}` at any nesting depth;
- file, image, media, category and interlanguage links (with their captions); other internal
  links become their label (`[[target|label]]` -> `label`, `[[target]]s` -> `targets`);
  external links become their label (`[http://x label]` -> `label`, a bare `[http://x]` goes);
- bold and italic quotes, list markers, indentation colons, magic words (`__TOC__`), behaviour
  switches, HTML entities (decoded), horizontal rules;
- sections whose content is not prose (References, External links, See also, Notes, Further
  reading, Bibliography, ...) and headings left without text under them.

It is a fast regular-expression cleaner in the spirit of WikiExtractor, not a full MediaWiki
renderer: template output that is prose in the rendered page (infobox values, navboxes) is
deliberately dropped.
"""

from __future__ import annotations

import html
import re

__all__ = ["NON_PROSE_SECTIONS", "clean_wikitext"]

NON_PROSE_SECTIONS = frozenset(
    {
        "references",
        "external links",
        "see also",
        "notes",
        "notes and references",
        "further reading",
        "bibliography",
        "sources",
        "citations",
        "footnotes",
        "works cited",
        "general references",
        "references and notes",
        "gallery",
    }
)
"""Section titles (lower case) dropped with everything under them."""

_KEEP_LAST_ARG = frozenset(
    {"lang", "nowrap", "nobr", "nobreak", "small", "smaller", "big", "larger", "sic",
     "not a typo", "proper name", "transl", "transliteration", "em", "strong", "lang-rtl",
     "script", "serif", "sans-serif", "mono", "code", "var", "abbr", "keypress"}
)  # fmt: skip
_KEEP_TEMPLATES = _KEEP_LAST_ARG | {"convert", "cvt"}
"""Templates whose text is prose (see `_template`); every other template is dropped."""

# Tags whose whole element (content included) is not prose.
_DROP_TAGS = (
    "ref|references|math|chem|ce|gallery|timeline|syntaxhighlight|source|score|graph|mapframe|"
    "maplink|templatedata|imagemap|includeonly|noinclude|hiero|inputbox|categorytree|table|"
    "templatestyles|indicator|section|charinsert|ref-group"
)
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
# `<ref name=x/>` or `<ref ...>...</ref>` (to the end of the text when unclosed).
_DROP_ELEMENT = re.compile(
    rf"<({_DROP_TAGS})\b[^>]*?(?:/>|>[^<]*(?:<(?!/\1\s*>)[^<]*)*(?:</\1\s*>)?)", re.I
)
_BR = re.compile(r"<br\s*/?>", re.I)
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^<>]*?/?>")
# Innermost elements, as "unrolled loops" (runs of ordinary characters, then one delimiter
# character that does not open or close the element): 3x faster than a tempered dot.
_TEMPLATE_REST = r"[^{}]*(?:(?:\{(?!\{)|\}(?!\}))[^{}]*)*\}\}"  # after the opening braces
_INNER_TEMPLATE = re.compile(r"\{\{" + _TEMPLATE_REST)
# An innermost template whose name is not one of the few kept by `_template`: dropped by the
# regex engine itself, without calling `_template` for each (most templates go).
_KEPT_NAMES = "|".join(
    re.escape(name).replace(r"\ ", "[ _]")
    for name in sorted(_KEEP_TEMPLATES, key=lambda n: (-len(n), n))
)
_DROP_TEMPLATE = re.compile(
    r"\{\{(?![^\S\n]*(?i:lang-|(?:" + _KEPT_NAMES + r")[^\S\n]*\|))" + _TEMPLATE_REST
)
_INNER_LINK = re.compile(r"\[\[([^\[\]]*(?:(?:\[(?!\[)|\](?!\]))[^\[\]]*)*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:|mailto:|//)[^\s\]]*(?:\s+([^\]]*))?\]")
_BOLD_ITALIC = re.compile("''+")
_MAGIC = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"^(={1,6})\s*(.+?)\s*\1\s*$")
_EMPTY_PARENS = re.compile(r"\([^\S\n]*(?:[,;:][^\S\n]*)*\)")
_SPACE_BEFORE_PUNCT = re.compile(r" ([,.;:!?])(?=\s|$)")  # after _SPACES
_SPACES = re.compile("  +")  # a literal prefix: 4x faster than [ \\t]{2,}
_HAS_ALNUM = re.compile(r"[^\W_]")  # str.isalnum() of some character
_HEADING_MARK = "\x00"

_DROP_NAMESPACES = frozenset(
    {"file", "image", "media", "category", "wikipedia", "wp", "template", "help", "portal",
     "user", "special", "wiktionary", "wikt", "s", "commons", "meta", "species", "mw"}
)  # fmt: skip
_INTERLANGUAGE = re.compile(r"^[a-z]{2,3}(?:-[a-z]{2,8})*$")


def _template(match: re.Match[str]) -> str:
    """An innermost `{{...}}`: the text of a few inline templates, nothing for the rest."""
    body = match.group(0)[2:-2]
    name, _, rest = body.partition("|")
    name = name.strip().lower().replace("_", " ")
    if not rest:
        return ""
    args = [a for a in rest.split("|") if "=" not in a.split("[[")[0]]
    if name in _KEEP_LAST_ARG or name.startswith("lang-"):
        if name == "abbr" and args:
            return args[0].strip()
        return args[-1].strip() if args else ""
    if name in ("convert", "cvt") and len(args) >= 2:
        value, unit = args[0].strip(), args[1].strip()
        if unit in ("-", "to", "and", "or", "–") and len(args) >= 4:
            return f"{value}–{args[2].strip()} {args[3].strip()}"
        return f"{value} {unit}"
    return ""


def _link(match: re.Match[str]) -> str:
    """An innermost `[[...]]`: its label, or nothing for files, categories, interlanguage."""
    inner = match.group(1)
    target, pipe, label = inner.partition("|")
    if ":" not in inner:  # most links: [[target]] or [[target|label]]
        if not pipe and "#" not in target:
            return target.strip()
        if pipe and "|" not in label and (label := label.strip()):
            return label
    target = target.strip()
    leading_colon = target.startswith(":")
    target = target.lstrip(":").strip()
    namespace, colon, _ = target.partition(":")
    ns = namespace.strip().lower()
    if colon and not leading_colon and (ns in _DROP_NAMESPACES or _INTERLANGUAGE.match(ns)):
        return ""
    if colon and leading_colon and ns in ("file", "image", "media"):
        return label.strip() if pipe else ""
    if pipe:
        if "|" in label:  # [[File:...]]-style options left on an unknown namespace
            label = label.rsplit("|", 1)[-1]
        label = label.strip()
        if label:
            return label
        return re.sub(r"\s*\([^)]*\)$", "", target.split(":", 1)[-1]).strip()  # pipe trick
    return target.split("#", 1)[0] if "#" in target and target.split("#", 1)[0] else target


def _remove_nested(text: str, pattern: re.Pattern[str], repl, opener: str) -> str:
    """Applies `pattern` (an innermost-element regex) until no `opener` is left to remove."""
    while opener in text:
        text, count = pattern.subn(repl, text)
        if not count:
            break
    return text


def _remove_tables(text: str) -> str:
    """Removes `{| ... |}` tables, nested ones included (after templates: `{{x|}}` has a `|}`).

    An unclosed `{|` stays as text, but the closed tables inside it still go.
    """
    out: list[str] = []
    pos = scan = 0
    while (start := text.find("{|", scan)) >= 0:
        depth, at = 1, start + 2
        while depth:
            close = text.find("|}", at)
            if close < 0:
                break
            nested = text.find("{|", at, close)
            if nested >= 0:
                depth, at = depth + 1, nested + 2
            else:
                depth, at = depth - 1, close + 2
        if depth:  # unclosed: keep its opening, look for tables after it
            scan = start + 2
            continue
        out.append(text[pos:start])
        pos = scan = at
    out.append(text[pos:])
    return "".join(out)


def _strip_markup(text: str) -> str:
    # Each pass is skipped when the text lacks its opening characters: most passes find
    # nothing in most articles, and `in` is much cheaper than a regex scan.
    if "<" in text:
        if "<!--" in text:
            text = _COMMENT.sub("", text)
        text = _DROP_ELEMENT.sub("", text)
    while "{{" in text:  # innermost templates first; a template's table goes with it
        text, count = _DROP_TEMPLATE.subn("", text)
        if not count:  # only kept templates are innermost now: their text replaces them
            text, count = _INNER_TEMPLATE.subn(_template, text)
            if not count:
                break
    if "{|" in text:
        text = _remove_tables(text)
    if "{{" in text or "}}" in text:
        text = text.replace("{{", "").replace("}}", "")  # unbalanced leftovers
    text = _remove_nested(text, _INNER_LINK, _link, "[[")
    if "[" in text:
        text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    if "<" in text:
        text = _BR.sub("\n", text)
        text = _TAG.sub("", text)
    if "__" in text:
        text = _MAGIC.sub("", text)
    if "''" in text:
        text = _BOLD_ITALIC.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    return text.replace("\xa0", " ")


def _blocks(text: str) -> list[str]:
    """Lines -> blocks (paragraphs and marked headings), dropping list and table debris."""
    # Whole-text passes (none crosses a line) instead of four regex calls per line.
    if "(" in text:
        text = _EMPTY_PARENS.sub("", text)
    if "\t" in text:
        text = text.replace("\t", " ")
    if "  " in text:
        text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    blocks: list[str] = []
    current: list[str] = []
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            if current:
                blocks.append("\n".join(current))
                current = []
            continue
        first = line[0]
        if first == "=" and (heading := _HEADING.match(line)):
            if current:
                blocks.append("\n".join(current))
                current = []
            level = len(heading.group(1))
            blocks.append(f"{_HEADING_MARK}{level}{heading.group(2).strip(' =')}")
            continue
        if first in "|!" or line.startswith("----"):
            if current:
                blocks.append("\n".join(current))
                current = []
            continue
        if first in "*#:;":
            line = line.lstrip("*#:;").lstrip()
        if _HAS_ALNUM.search(line):
            current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def _select(blocks: list[str]) -> list[str]:
    """Drops non-prose sections and headings with no text under them."""
    out: list[tuple[int, str]] = []  # (heading level or 0, text)
    skip_level = 0
    for block in blocks:
        if block.startswith(_HEADING_MARK):
            level, title = int(block[1]), block[2:].strip()
            if skip_level and level > skip_level:
                continue
            skip_level = level if title.lower() in NON_PROSE_SECTIONS or not title else 0
            if not skip_level:
                while out and out[-1][0] and out[-1][0] >= level:
                    out.pop()  # the previous heading had no text
                out.append((level, title))
        elif not skip_level:
            out.append((0, block))
    while out and out[-1][0]:
        out.pop()
    return [text for _, text in out]


def clean_wikitext(text: str, title: str | None = None) -> str:
    """Turns an article's wikitext into clean prose (see the module docstring).

    Args:
        text: The wikitext of the article (XML entities already decoded).
        title: The page title; when given it becomes the first block.

    Returns:
        Blocks (title, section titles, paragraphs) joined by blank lines; lines of a paragraph
        (e.g. former list items) are joined by newlines. Empty if nothing prose-like is left.

    Example:
        >>> wikitext = "'''Foo''' is a [[bar (baz)|bar]].{{cn}}<ref>x</ref>"
        >>> clean_wikitext(wikitext + "\\n==See also==\\n* [[Qux]]", "Foo")
        'Foo\\n\\nFoo is a bar.'
    """
    blocks = _select(_blocks(_strip_markup(text)))
    if not blocks:
        return ""
    if title:
        blocks.insert(0, title.strip())
    return "\n\n".join(blocks)
