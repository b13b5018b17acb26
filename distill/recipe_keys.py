"""Every recipe key with its type, default and comment, read from the config dataclasses themselves
(``distill keys``): the comments in :mod:`distill.config` are the one place a key is documented."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import tokenize
from dataclasses import dataclass
from typing import Any

from distill import config


@dataclass
class Key:
    name: str  # dotted: train.steps
    type: str  # as annotated: int, list[int] | None
    default: Any
    comment: str


def recipe_keys(cls: type = config.RecipeConfig, prefix: str = "") -> list[Key]:
    """The keys of ``cls`` and its sections, in the order the dataclasses declare them."""
    comments = _field_comments()
    keys: list[Key] = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += recipe_keys(type(default), f"{prefix}{f.name}.")
            continue
        comment = comments.get((cls.__name__, f.name), "")
        keys.append(Key(f"{prefix}{f.name}", str(f.type), default, comment))
    return keys


def format_keys(keys: list[Key], cfg: config.RecipeConfig | None = None) -> str:
    """One line a key: ``name  type  default  # comment``; with a recipe, its value (and the
    default where they differ)."""
    rows = []
    for k in keys:
        shown = _yaml(k.default)
        if cfg is not None:
            value = functools.reduce(getattr, k.name.split("."), cfg)
            shown = _yaml(value) + ("" if value == k.default else f" (default {_yaml(k.default)})")
        rows.append((k.name, k.type, shown, k.comment))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True))
        + (f"  # {r[3]}" if r[3] else "")
        for r in rows
    )


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() else value
    return str(value)


def _field_comments() -> dict[tuple[str, str], str]:
    """(class, field) -> the comment written on the field's lines, and on comment-only lines right
    after it (a comment continued below)."""
    source = inspect.getsource(config)
    lines = source.splitlines()
    on_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            on_line[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            parts = [on_line[n] for n in range(item.lineno, item.end_lineno + 1) if n in on_line]
            n = item.end_lineno + 1
            while n <= len(lines) and lines[n - 1].strip().startswith("#"):
                parts.append(on_line.get(n, ""))
                n += 1
            out[(node.name, item.target.id)] = " ".join(p for p in parts if p)
    return out
