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


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def ast_fingerprint(node: ast.AST) -> str:
    """Hash of a syntax tree without docstrings; positions are not part of ``ast.dump``.

    Mutates ``node`` (docstrings are dropped): pass a tree you no longer compile.
    """
    dumped = ast.dump(_strip_docstrings(node), annotate_fields=False, include_attributes=False)
    return hashlib.sha256(dumped.encode()).hexdigest()[:16]


def code_fingerprint(fn: types.FunctionType) -> str:
    """Hash of a function's compiled code, for functions whose source we do not parse.

    Bytecode ignores comments and whitespace; line numbers live in a separate
    table we leave out; the docstring constant is skipped. It is stable for a
    given Python minor version (another version compiles differently).
    """
    parts: list[bytes] = []
    _walk_code(fn.__code__, parts, fn.__doc__ if isinstance(fn.__doc__, str) else None)
    parts.append(_canonical(fn.__defaults__).encode())
    parts.append(_canonical(sorted((fn.__kwdefaults__ or {}).items())).encode())
    return hashlib.sha256(b"\x00".join(parts)).hexdigest()[:16]


def _walk_code(code: types.CodeType, parts: list[bytes], doc: Any = None) -> None:
    parts.append(code.co_code)
    parts.append(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)).encode())
    parts.append(repr((code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)).encode())
    for i, const in enumerate(code.co_consts):
        if isinstance(const, types.CodeType):
            _walk_code(const, parts)
        elif i == 0 and (const is None or const == doc):
            continue  # the docstring slot (None when there is no docstring)
        else:
            parts.append(_canonical(const).encode())


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
