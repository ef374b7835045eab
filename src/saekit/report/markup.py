"""HTML building blocks: one self-contained page with inline styling, sections,
paragraphs and tables (every string escaped here), and the same tables as aligned text
for the terminal."""

from __future__ import annotations

import html
from typing import Sequence

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.meaning { text-align: left; color: #555; font-size: 0.9em; }
th { background: #f3f3f3; }
.scroll { overflow-x: auto; max-width: 100%; }
.scroll table { font-size: 0.8em; white-space: nowrap; }
.nonfinite { color: #b00; font-weight: bold; }
.note { color: #666; font-style: italic; }
.banner { background: #fff3cd; border: 1px solid #e0b000; padding: 0.6em 1em; margin: 1em 0; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
"""


def page(title: str, sections: Sequence[str], banner: str | None = None) -> str:
    banner_html = f'<div class="banner">⚠ {html.escape(banner)}</div>' if banner else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{banner_html}\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def html_section(title: str, *parts: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def paragraph(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>"


def note_paragraphs(texts: Sequence[str]) -> list[str]:
    return [paragraph(t, "note") for t in texts]


def html_table(header: Sequence[Sequence[str]], rows: Sequence[Sequence[str]], meaning_column: bool = False) -> str:
    """Cells are plain strings (escaped here); non-finite ones are highlighted; with
    ``meaning_column`` the last column is prose, left-aligned."""

    def cell(tag: str, text: str, last: bool) -> str:
        cls = ' class="nonfinite"' if text in ("nan", "inf", "-inf") else ""
        if last and meaning_column and tag == "td":
            cls = ' class="meaning"'
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    def tr(tag: str, row: Sequence[str]) -> str:
        return "<tr>" + "".join(cell(tag, c, i == len(row) - 1) for i, c in enumerate(row)) + "</tr>"

    head = "".join(tr("th", row) for row in header)
    body = "".join(tr("td", row) for row in rows)
    return f"<table>{f'<thead>{head}</thead>' if head else ''}<tbody>{body}</tbody></table>"


def text_table(header: Sequence[Sequence[str]], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns: the first (names) left, the rest right; header rows above the last
    one are group labels (the regimes), left-aligned so each starts over its first column."""
    lines = [*header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

    def render(line: Sequence[str], group: bool) -> str:
        cells = (c.ljust(w) if i == 0 or group else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        return "  ".join(cells).rstrip()

    out = [render(line, n < len(header) - 1) for n, line in enumerate(lines)]
    out.insert(len(header), "-" * (sum(widths) + 2 * (len(widths) - 1)))
    return "\n".join(out)
