"""What a widget shows where its JavaScript cannot run.

Executed notebooks (papermill, nbclient), nbconvert's HTML and untrusted
notebooks in JupyterLab render ``text/html`` in place of the widget view, so
every widget's MIME bundle carries a true static picture next to the view.

Pictures go in as ``<img src="data:image/svg+xml;base64,...">``, not as inline
``<svg>``: JupyterLab sanitizes the HTML of untrusted notebooks with an
allow-list that has no SVG elements (measured with Lab 4.6: the inline SVG's
shapes vanish and its labels run together as text), while an image with a
data URI is kept and drawn, in colour, there and in nbconvert's HTML alike.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any

_DATA_SVG = re.compile(r"""src=['"]data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)['"]""")


def svg_img(svg: str, alt: str, css_class: str) -> str:
    """An ``<img>`` carrying ``svg`` as a data URI (``alt``: the same in words)."""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (
        f"<img class='{html.escape(css_class)}' alt='{html.escape(alt)}' "
        f"src='data:image/svg+xml;base64,{data}'>"
    )


def embedded_svgs(page: str) -> list[str]:
    """The SVG documents of the pictures :func:`svg_img` put in ``page`` (for checks and tools)."""
    return [base64.b64decode(m).decode("utf-8") for m in _DATA_SVG.findall(page)]


class StaticFallback:
    """Mixin for an ``anywidget.AnyWidget``: adds ``text/html`` from :meth:`static_html`."""

    def static_html(self) -> str:  # pragma: no cover - every widget defines its own
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        # ipywidgets returns the bundle alone, or (bundle, metadata) in some versions.
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if data is not None:
            data["text/html"] = self.static_html()
        return bundle
