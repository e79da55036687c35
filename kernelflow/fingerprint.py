"""Fingerprints of code that ignore what does not change behaviour.

Comments, whitespace, docstrings and line positions never reach a
fingerprint; any change to what the code does (a name, a constant, an
operator, a default) does.
"""

from __future__ import annotations

import ast
import hashlib
import types
from typing import Any


def strip_docstrings(tree: ast.AST) -> ast.AST:
    """Drop docstrings from every module, class and function in ``tree`` (in place)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def code_fingerprint(fn: types.FunctionType) -> str:
    """Hash of a function's compiled code, for functions whose source we do not parse.

    Bytecode ignores comments and whitespace; line numbers live in a separate
    table we leave out; the docstring constant is skipped. It is stable for a
    given Python minor version (another version compiles differently).
    """
    h = hashlib.sha256()
    doc = fn.__doc__ if isinstance(fn.__doc__, str) else None
    _walk_code(fn.__code__, h, doc)
    h.update(_canonical(fn.__defaults__).encode())
    if fn.__kwdefaults__:
        h.update(_canonical(sorted(fn.__kwdefaults__.items())).encode())
    return h.hexdigest()[:16]


_PLAIN_CONSTANTS = (int, str, float, bytes, bool, type(None))


def _walk_code(code: types.CodeType, h: Any, doc: str | None) -> None:
    h.update(code.co_code)
    h.update(
        repr(
            (
                code.co_names,
                code.co_varnames,
                code.co_freevars,
                code.co_cellvars,
                code.co_argcount,
                code.co_posonlyargcount,
                code.co_kwonlyargcount,
                code.co_flags,
            )
        ).encode()
    )
    consts = code.co_consts
    if consts and (consts[0] is None or consts[0] == doc):
        consts = consts[1:]  # the docstring slot (None when there is no docstring)
    for const in consts:
        if type(const) is types.CodeType:
            _walk_code(const, h, None)
        elif type(const) in _PLAIN_CONSTANTS:
            h.update(repr(const).encode())
        else:
            h.update(_canonical(const).encode())
        h.update(b"\x00")


def _canonical(value: Any) -> str:
    # frozenset constants (`x in {"a", "b"}`) iterate in hash order, which
    # changes between processes for strings: sort them so the hash is stable.
    if isinstance(value, (frozenset, set)):
        return "{" + ",".join(sorted(_canonical(v) for v in value)) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_canonical(v) for v in value) + ")"
    text = repr(value)
    if " at 0x" in text:  # default objects without a stable repr: their type is what we can hash
        return f"<{type(value).__module__}.{type(value).__qualname__}>"
    return text
