"""HTML assembly of a report: plain functions from data to escaped HTML fragments.

Everything is inline (CSS in a ``<style>`` element, images as ``data:image/png;base64``
URIs), so the page opens without network or files beside it. No JavaScript.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.em td { font-weight: bold; background: #fafae0; }
pre { background: #f6f6f6; padding: 0.7em; overflow-x: auto; font-size: 0.85em; }
code { font-size: 0.95em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
.note { color: #555; font-size: 0.9em; } nav ul { columns: 2; }
"""


def esc(value: object) -> str:
    """``value`` as escaped HTML text."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A cell value: floats with ``digits`` decimals (``nan`` for NaN, ``—`` for None)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return " × ".join(f"{v:g}" if isinstance(v, float) else fmt(v, digits) for v in value) if value else "—"
    return str(value)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    caption: str | None = None,
    emphasize: Iterable[int] = (),
    digits: int = 4,
) -> str:
    """An HTML table; numbers are right-aligned, rows whose index is in ``emphasize`` bold."""
    em = set(emphasize)
    out = ["<table>"]
    if caption:
        out.append(f"<caption class='note'>{esc(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>")
    for i, row in enumerate(rows):
        cells = []
        for v in row:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f"<td{' class=num' if num else ''}>{esc(fmt(v, digits))}</td>")
        out.append(f"<tr{' class=em' if i in em else ''}>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def key_values(items: Mapping[str, Any], *, caption: str | None = None) -> str:
    """A two-column table of ``name: value``."""
    out = ["<table>"]
    if caption:
        out.append(f"<caption class='note'>{esc(caption)}</caption>")
    for k, v in items.items():
        text = f"{v:.6g}" if isinstance(v, float) else fmt(v)
        out.append(f"<tr><th>{esc(k)}</th><td>{esc(text)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def image(png: str | Path, alt: str, caption: str | None = None) -> str:
    """A figure with the PNG file ``png`` inlined as a base64 data URI."""
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure><img alt='{esc(alt)}' src='data:image/png;base64,{data}'>{cap}</figure>"


def pre(text: str) -> str:
    """Preformatted text (a config, a record)."""
    return f"<pre>{esc(text)}</pre>"


def commands(items: Sequence[tuple[str, str]]) -> str:
    """Commands, each with what it does: ``[(what, command), ...]``."""
    return "\n".join(f"<p>{esc(what)}</p><pre><code>{esc(cmd)}</code></pre>" for what, cmd in items)


def note(text: str) -> str:
    """A paragraph of small print."""
    return f"<p class='note'>{esc(text)}</p>"


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def details(summary: str, inner: str) -> str:
    """A collapsed block (``<details>``, no script needed)."""
    return f"<details><summary>{esc(summary)}</summary>\n{inner}\n</details>"


@dataclass
class Section:
    """One ``<h2>`` section of the page: its title and HTML fragments (made by this module)."""

    title: str
    blocks: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")


def subheading(text: str) -> str:
    return f"<h3>{esc(text)}</h3>"


def page(title: str, subtitle: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole page: title, lines under it, a table of contents and the sections."""
    toc = "".join(f"<li><a href='#{s.anchor}'>{esc(s.title)}</a></li>" for s in sections)
    body = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}</style>",
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
        *(note(line) for line in subtitle),
        f"<nav><ul>{toc}</ul></nav>",
    ]
    for s in sections:
        body.append(f"<h2 id='{s.anchor}'>{esc(s.title)}</h2>")
        body.extend(s.blocks)
    body.append("</body></html>")
    return "\n".join(body) + "\n"


__all__ = [
    "CSS",
    "Section",
    "commands",
    "details",
    "esc",
    "fmt",
    "image",
    "key_values",
    "note",
    "page",
    "paragraph",
    "pre",
    "subheading",
    "table",
]
