"""An image's card on the main page as one piece of HTML: the image, its encrypted twin and its predictions.

Why not Streamlit's own elements: every element is a component that every visitor's browser renders again on every
page run, and a card drawn as two `st.image`, a label, a caption and a `st.table` is about ten of them. As one
`st.html` element, twenty browsers on one machine opened a page of three cards faster in most measured rounds
(docs/app.md, "Light pages"). The images go in as data URIs, so a card needs no further request to the server.
"""

from __future__ import annotations

import base64
import html

import pandas as pd

# Shared by every card (st.html puts a style-only body in the page's head, once). Colours follow the theme.
CARD_CSS = """<style>
.encvit-card{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr) minmax(0,3fr);gap:1rem;
  align-items:start;padding:1rem;margin-bottom:1rem;border:1px solid rgba(128,128,128,.3);border-radius:.5rem}
.encvit-card figure{margin:0;text-align:center}
.encvit-card img{display:block;width:100%;height:auto}
.encvit-card figcaption{font-size:.875rem;opacity:.6;margin-top:.25rem;overflow-wrap:anywhere}
.encvit-card p{margin:0 0 .5rem}
.encvit-card .encvit-note{font-size:.875rem;opacity:.6}
.encvit-card table{border-collapse:collapse;width:100%;font-size:.875rem}
.encvit-card th,.encvit-card td{border:1px solid rgba(128,128,128,.3);padding:.25rem .5rem;text-align:left}
.encvit-card th{font-weight:400;opacity:.6}
</style>"""


def png_figure(png: bytes, caption: str, alt: str) -> str:
    """A PNG (drawn enlarged already, so the browser scales it by little) with its caption below."""
    source = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="{source}" alt="{html.escape(alt)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def table_html(table: pd.DataFrame) -> str:
    """A table of predictions with its index (the run) as the first column; every cell escaped."""
    return table.reset_index().to_html(index=False, border=0, escape=True)


def image_card(
    name: str,
    plain_png: bytes,
    encrypted_png: bytes,
    fingerprint: str,
    label: str | None = None,
    note: str | None = None,
    table: pd.DataFrame | None = None,
) -> str:
    """One image's card: the image captioned with its name, the encrypted image captioned "encrypted with
    <fingerprint>", then the true label, a note and the table of predictions, each when given."""
    parts = [
        png_figure(plain_png, name, name),
        png_figure(encrypted_png, f"encrypted with {fingerprint}", f"{name}, encrypted with {fingerprint}"),
    ]
    details = []
    if label:
        details.append(f"<p>True label: <strong>{html.escape(label)}</strong></p>")
    if note:
        details.append(f'<p class="encvit-note">{html.escape(note)}</p>')
    if table is not None:
        details.append(table_html(table))
    parts.append(f'<div class="encvit-predictions">{"".join(details)}</div>')
    return f'<div class="encvit-card">{"".join(parts)}</div>'


__all__ = ["CARD_CSS", "image_card", "png_figure", "table_html"]
