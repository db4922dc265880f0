"""`render`: a `Collection` in one of the output formats of `shiftbench collect`, by name.

The plain renderings live in `renderers` (text, Markdown, LaTeX, CSV, JSON), the HTML report in
`report` and DomainBed's collect_results layout in `domainbed_format`; this module sits above all
three, so none of them imports another's dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable

from shiftbench.errors import UnknownNameError
from shiftbench.results.domainbed_format import domainbed_format
from shiftbench.results.renderers import (
    render_csv,
    render_json,
    render_latex,
    render_markdown,
    render_text,
)
from shiftbench.results.report import render_html
from shiftbench.results.table_model import Collection


def _domainbed(collection: Collection) -> str:
    return domainbed_format(collection.records, collection.rules)


RENDERERS: dict[str, Callable[[Collection], str]] = {
    "text": render_text, "markdown": render_markdown, "latex": render_latex, "csv": render_csv,
    "json": render_json, "html": render_html, "domainbed": _domainbed,
}
FORMATS = tuple(RENDERERS)


def render(collection: Collection, fmt: str) -> str:
    """The collection in one of `FORMATS`."""
    if fmt not in RENDERERS:
        raise UnknownNameError("output format", fmt, FORMATS)
    return RENDERERS[fmt](collection)
