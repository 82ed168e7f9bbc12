"""The page pieces both outputs share: number formatting, HTML escaping, tables, the page frame, Markdown.

Holds what ``report.py`` (one run) and ``compare.py`` (runs side by side) write the same way: ``fmt``
(``n/a`` for None/NaN, floats at ``digits`` decimals), ``esc`` (``fmt`` then HTML-escaped), PNG bytes as
``data:`` URLs, the scrolling table box, ``<section>`` blocks, the page from ``report_template.html``
(``string.Template``: ``$title``, ``$subtitle``, ``$provenance``, ``$nav``, ``$body``; inline CSS/JS only, so a
page opens offline), Markdown tables and writing a page with its Markdown beside it. Functions here take and
return text; every value shown on a page passes through ``html.escape`` exactly once (the callers build
tags, these helpers escape the text they are given unless named ``*_html``).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import os
import string
from importlib import resources
from pathlib import Path
from typing import Any

from pneumoseg import __version__
from pneumoseg.util.atomic import atomic_write_text

__all__ = ["data_url", "esc", "fmt", "generated_text", "md_table", "page", "section", "table_html", "write_pages"]


def fmt(value: Any, digits: int = 4) -> str:
    """``n/a`` for None and NaN, a float at ``digits`` decimals, anything else as ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def esc(value: Any) -> str:
    return html.escape(fmt(value))


def data_url(png: bytes) -> str:
    """PNG bytes as a ``data:image/png;base64,...`` URL (images are embedded: the page needs no files)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def table_html(head_cells: str, body_rows: str, attrs: str = "") -> str:
    """A table (``<th>`` cells and ``<tr>`` rows, already HTML) in a box that scrolls sideways on its own,
    so a wide table never widens the page; ``attrs`` goes into the ``<table>`` tag (e.g. `` class=sortable``)."""
    return (f'<div class="tablewrap"><table{attrs}><thead><tr>{head_cells}</tr></thead>'
            f"<tbody>{body_rows}</tbody></table></div>")


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>\n'


def generated_text() -> str:
    """``generated YYYY-MM-DD HH:MM by pneumoseg VERSION`` (the end of a page's subtitle)."""
    return f"generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by pneumoseg {__version__}"


def page(title: str, subtitle: str, provenance: str, sections: list[tuple[str, str, str]]) -> str:
    """A complete HTML document: the template with a nav bar and one ``<section>`` per
    ``(anchor, title, body HTML)``; ``title``, ``subtitle`` and ``provenance`` are plain text."""
    nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
    template = string.Template(resources.files("pneumoseg.reporting").joinpath("report_template.html").read_text("utf-8"))
    return template.substitute(title=html.escape(title), subtitle=html.escape(subtitle),
                               provenance=html.escape(provenance), nav=nav,
                               body="".join(section(a, t, b) for a, t, b in sections))


def md_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; ``|`` inside a cell is escaped."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in rows])


def write_pages(html_path: str | os.PathLike[str], html_text: str, markdown: str) -> tuple[Path, Path]:
    """Write the page to ``html_path`` and the Markdown beside it (same name, ``.md``), each atomically;
    return both paths."""
    html_path = Path(html_path)
    md_path = html_path.with_suffix(".md")
    atomic_write_text(html_path, html_text)
    atomic_write_text(md_path, markdown)
    return html_path, md_path
