"""A small document model, and its renderings: Markdown, one HTML page with its CSS inline and
its images referenced by relative path, and plain text for a terminal.

The report builds one Document and renders it twice, so report.md and report.html always show
the same headings, tables, figures and text; a command that ends by showing a table in the
terminal renders the same Table as text."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from urllib.parse import quote


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    """A grid of text cells under a title (rendered as a level-2 heading), with an optional
    caption below it."""

    header: list[str]
    rows: list[list[str]]
    #: indices of the rows that annotate the results (item counts, chance) rather than hold one
    note_rows: set[int] = field(default_factory=set)
    title: str = ""
    caption: str = ""


@dataclass
class Image:
    """A figure: `src` is a path relative to the document, `caption` also its alt text."""

    src: str
    caption: str


@dataclass
class Code:
    """Inline code (a file path, say), inside a list item."""

    text: str


#: a list item is a run of plain text and code
Inline = str | Code


@dataclass
class BulletList:
    items: list[Sequence[Inline]]


@dataclass
class HtmlSection:
    """A section only the HTML page can hold (the item browser, with its script): given as
    finished HTML, and as the one Markdown line that points to it."""

    html: str
    markdown: str


Block = Heading | Paragraph | Table | Image | BulletList | HtmlSection


@dataclass
class Document:
    """A titled sequence of blocks; the title is the page's level-1 heading."""

    title: str
    blocks: list[Block] = field(default_factory=list)


# ---------------------------------------------------------------------------- Markdown


def to_markdown(doc: Document) -> str:
    return markdown_blocks([Heading(doc.title, 1), *doc.blocks])


def markdown_blocks(blocks: Sequence[Block]) -> str:
    """Blocks separated by one blank line; the text ends with a newline."""
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


def _md_block(b: Block) -> str:
    match b:
        case Heading():
            return f"{'#' * b.level} {b.text}"
        case Paragraph():
            return b.text
        case Table():
            return _md_table(b)
        case Image():
            return f"![{b.caption}]({quote(b.src)})"
        case BulletList():
            return "\n".join("- " + "".join(_md_inline(x) for x in item) for item in b.items)
        case HtmlSection():
            return b.markdown
    raise TypeError(f"not a document block: {b!r}")


def _md_text(s: str) -> str:
    # Only text in table cells and list items is escaped: there a "|" would split a cell and a
    # line break would end the row or the item. Other text is written as given.
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_inline(x: Inline) -> str:
    return f"`{x.text}`" if isinstance(x, Code) else _md_text(x)


def _md_table(t: Table) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    lines = [_md_block(Heading(t.title, 2)), ""] if t.title else []
    lines.append(line([_md_text(h) for h in t.header]))
    # names in the first column, left-aligned; numbers in the others, right-aligned (as in the CSS)
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(t.header) - 1)) + "|")
    for i, row in enumerate(t.rows):
        cells = [_md_text(c) for c in row]
        if i in t.note_rows and cells:
            cells[0] = f"*{cells[0]}*"
        lines.append(line(cells))
    if t.caption:
        lines += ["", t.caption]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- HTML


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0}th,td{border:1px solid #ccc;padding:4px 8px}
td{text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
tr.note td{color:#666;font-style:italic}.caption{color:#555;font-size:0.9em;max-width:60em}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}code{background:#f6f6f6}"""


def to_html(doc: Document) -> str:
    """One HTML page; images are referenced by their relative paths, everything else is inline."""
    body = "\n".join(_html_block(b) for b in [Heading(doc.title, 1), *doc.blocks])
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(doc.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"{body}\n</body>\n</html>\n")


def _html_block(b: Block) -> str:
    match b:
        case Heading():
            return f"<h{b.level}>{escape(b.text)}</h{b.level}>"
        case Paragraph():
            return f"<p>{escape(b.text)}</p>"
        case Table():
            return _html_table(b)
        case Image():
            return (f'<figure><img src="{escape(quote(b.src))}" alt="{escape(b.caption)}">'
                    f"<figcaption>{escape(b.caption)}</figcaption></figure>")
        case BulletList():
            items = ("<li>" + "".join(_html_inline(x) for x in item) + "</li>" for item in b.items)
            return "<ul>" + "".join(items) + "</ul>"
        case HtmlSection():
            return b.html
    raise TypeError(f"not a document block: {b!r}")


def _html_inline(x: Inline) -> str:
    return f"<code>{escape(x.text)}</code>" if isinstance(x, Code) else escape(x)


def _html_table(t: Table) -> str:
    def row(cells: Sequence[str], tag: str) -> str:
        return "".join(f"<{tag}>{escape(c)}</{tag}>" for c in cells)

    out = [_html_block(Heading(t.title, 2))] if t.title else []
    out += ["<table>", f"<thead><tr>{row(t.header, 'th')}</tr></thead>", "<tbody>"]
    for i, cells in enumerate(t.rows):
        cls = ' class="note"' if i in t.note_rows else ""
        out.append(f"<tr{cls}>{row(cells, 'td')}</tr>")
    out.append("</tbody></table>")
    if t.caption:
        out.append(f'<p class="caption">{escape(t.caption)}</p>')
    return "\n".join(out)


# ---------------------------------------------------------------------------- plain text


def text_table(t: Table, width: int = 100) -> str:
    """The table in aligned columns (names left, numbers right, as in the other renderings)
    under its title, with its caption wrapped to `width`: Markdown's pipes do not line up in a
    terminal."""
    grid = [t.header, *t.rows]
    widths = [max(len(row[i]) if i < len(row) else 0 for row in grid) for i in range(len(t.header))]

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(padded).rstrip()

    lines = [t.title] if t.title else []
    lines += [line(t.header), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in t.rows]
    if t.caption:
        lines += ["", textwrap.fill(t.caption, width)]
    return "\n".join(lines) + "\n"
