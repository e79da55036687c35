"""What a widget shows where its JavaScript cannot run.

Executed notebooks (papermill, nbclient), nbconvert's HTML and untrusted
notebooks in JupyterLab render ``text/html`` in place of the widget view, so
every widget's MIME bundle carries a true static picture next to the view.
"""

from __future__ import annotations

from typing import Any


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
