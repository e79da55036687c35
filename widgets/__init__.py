"""How workflows and runs look in a notebook.

``dag_static`` renders a DAG as HTML with an inline SVG (laid out by Graphviz
``dot`` when installed) or as text when it is not. The live anywidget DAG,
approval, alert and timeline widgets build on the same colours.
"""

from .dag_static import STATUS_COLORS, dag_html, dag_svg, has_dot

__all__ = ["STATUS_COLORS", "dag_html", "dag_svg", "has_dot"]
