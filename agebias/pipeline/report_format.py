"""The Markdown and HTML pieces every section of the experiment report is built from: tables (cells already text)
and figures embedded in the page (PNG as a data URI, so report.html is one self-contained file)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table (every cell escaped)."""
    e = html.escape
    return ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def html_figure(title: str, png: Path) -> str:
    """A captioned figure with the PNG embedded."""
    e = html.escape
    data = base64.b64encode(png.read_bytes()).decode()
    return (f"<figure><img alt='{e(title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{e(title)}</figcaption></figure>")
