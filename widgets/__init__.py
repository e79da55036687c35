"""How workflows and runs look in a notebook.

``dag`` is the live DAG widget (anywidget); ``dag_static`` renders a DAG as
HTML with an inline SVG (laid out by Graphviz ``dot`` when installed) or as
text when it is not: every widget's static fallback. The approval, alert and
timeline widgets share the same palette (``STATUS_COLORS``).
"""

from .dag import DagWidget
from .dag_static import STATUS_COLORS, dag_html, dag_svg, has_dot

__all__ = ["STATUS_COLORS", "DagWidget", "dag_html", "dag_svg", "has_dot"]
