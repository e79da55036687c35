"""Values typed on a command line or a magic line: ``n=3``, ``flag=True``, ``xs=[1,2]``."""

from __future__ import annotations

import ast
from typing import Any


def parse_literal(text: str) -> Any:
    """A Python literal if ``text`` is one (``3``, ``True``, ``[1, 2]``, ``'a b'``), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
