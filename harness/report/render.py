"""Rendering the report: a list of Blocks -> report.md and a self-contained report.html; figures -> PNG.

The report's content is built once as Blocks so that the markdown and the HTML say the same thing. In the
HTML, `code` spans become <code> (no literal backticks), every table sits in a horizontally scrollable box
(wide tables never overflow the page), and warnings are set apart.
"""

from __future__ import annotations

import base64
import html
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.report.base import fmt_base

# Columns holding a RoPE base: printed as 40, 500, 1e4, 1e6 (harness.report.base.fmt_base).
BASE_COLUMNS = ("rope_theta", "pretrain_base", "b0", "base", "critical_base")


@dataclass
class Block:
    """One piece of the report: kind is h1, h2, h3, p, warn (a warning paragraph), ul (content: items),
    table (a DataFrame), img (a file name), or details / end (a collapsed section: its summary line, then
    the blocks up to `end`)."""

    kind: str
    content: Any
    caption: str = ""


def fmt_cell(value: Any, column: str = "") -> str:
    """A table cell for markdown: lengths and limits as whole tokens, other numbers to 4 significant
    digits."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if column in BASE_COLUMNS:
        return fmt_base(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if column.endswith(("_len", "limit", "_low", "_high", "length")):
            return f"{value:,.0f}"
        if value == int(value) and abs(value) >= 1000:
            return f"{value:g}"
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.content)
        elif b.kind == "p":
            out.append(b.content)
        elif b.kind == "warn":
            out.append(f"> **Warning:** {b.content}")
        elif b.kind == "ul":
            out.append("\n".join(f"- {item}" for item in b.content))
        elif b.kind == "table":
            frame: pd.DataFrame = b.content
            head = "| " + " | ".join(map(str, frame.columns)) + " |"
            sep = "|" + "|".join("---" for _ in frame.columns) + "|"
            body = ["| " + " | ".join(fmt_cell(v, c) for c, v in zip(frame.columns, row, strict=True)) + " |"
                    for row in frame.itertuples(index=False)]
            out.append("\n".join([head, sep, *body]))
        elif b.kind == "img":
            out.append(f"![{b.caption}]({b.content})\n\n*{b.caption}*")
        elif b.kind == "details":
            out.append(f"<details><summary>{b.content}</summary>")
        elif b.kind == "end":
            out.append("</details>")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}td:first-child,
th:first-child{text-align:left}figure{margin:1em 0 2em}img{max-width:100%}\
figcaption{font-size:13px;color:#555}
code{background:#f4f4f4;padding:0 3px}.scroll{overflow-x:auto;max-width:100%}
td{white-space:nowrap}td.wrap{white-space:normal;min-width:16em;text-align:left}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:.4em .8em}"""

WRAP_COLUMNS = ("note", "warning", "command", "what")  # long text: wraps instead of widening the table


def _inline(text: str) -> str:
    """Escape for HTML and turn `code` spans into <code> (no literal backticks reach the page)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text))).replace("`", "")


def _html_row(columns: Any, row: tuple) -> str:
    """One table row: the markdown cells, unescaped from markdown's `\\|` and escaped for HTML."""
    cells = []
    for c, v in zip(columns, row, strict=True):
        wrap = " class='wrap'" if str(c) in WRAP_COLUMNS else ""
        cells.append(f"<td{wrap}>{_inline(fmt_cell(v, c).replace(chr(92) + '|', '|'))}</td>")
    return "<tr>" + "".join(cells) + "</tr>"


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    """One HTML file with the images of `folder` inlined as base64, so it can be mailed or archived alone."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{_inline(b.content)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline(b.content)}</p>")
        elif b.kind == "warn":
            out.append(f"<p class='warn'><b>Warning:</b> {_inline(b.content)}</p>")
        elif b.kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.content) + "</ul>")
        elif b.kind == "table":
            frame = b.content
            head = "".join(f"<th>{_inline(c)}</th>" for c in frame.columns)
            body = "".join(_html_row(frame.columns, row) for row in frame.itertuples(index=False))
            out.append(f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>")
        elif b.kind == "img":
            data = base64.b64encode((folder / b.content).read_bytes()).decode("ascii")
            alt = html.escape(b.caption.replace("`", ""), quote=True)
            out.append(f"<figure><img alt=\"{alt}\" src='data:image/png;base64,{data}'>"
                       f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
        elif b.kind == "details":
            out.append(f"<details><summary>{_inline(b.content)}</summary>")
        elif b.kind == "end":
            out.append("</details>")
    out.append("</body></html>")
    return "\n".join(out)


def render_figure(fn: Callable[[Any, Any], Any], ctx: Any, path: Path) -> str:
    """Call a task's figure function `fn(ctx, ax)` on one fresh Axes with the report's shared style and save
    it as PNG (`ctx`: the task's analysis.FigureContext; not imported here, render knows no analysis).
    Returns what the function returned for its caption ("" for None)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.size": 9, "axes.labelsize": 9, "axes.titlesize": 10, "legend.fontsize": 7.5,
                         "savefig.dpi": 150, "figure.dpi": 100}):
        fig, ax = plt.subplots(figsize=(5.6, 3.7))
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always", UserWarning)
                extra = fn(ctx, ax)
                fig.savefig(path, bbox_inches="tight", facecolor="white")
        finally:
            plt.close(fig)
    extra = extra if isinstance(extra, str) else ""
    if any("missing from" in str(w.message) for w in seen):  # matplotlib's "Glyph ... missing from font"
        extra += (" Some label characters are missing from the plotting font and show as boxes: install a "
                  "font that has them (e.g. Debian's fonts-noto-cjk), or use ASCII labels.")
    return extra.strip()
