"""Plain data (YAML) into typed dataclasses: type checks, unknown-key errors with suggestions, range checks.

Used by :mod:`distill.config`; every error is a one-line :class:`DistillError` that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Union

from distill.errors import DistillError

_PLAIN = (str, int, float, bool, list, dict, type(None))


def _shown(value: Any) -> str:
    """A value as an error line shows it: plain data's repr, cut to 80 characters; any other
    object (a model, a data set put into a recipe dict) by its type."""
    if not isinstance(value, _PLAIN):
        return (
            f"a {type(value).__name__} (a recipe holds plain values; pass models, tokenizers and data "
            "sets to distill.run(..., teacher=, student=, tokenizer=, data=))"
        )
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "recipe"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DistillError(f"{where}: expected a mapping, got {_shown(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise DistillError(_unknown_key_message(full, key, fields, prefix))
        kwargs[key] = _coerce(hints[key], value, full)
    return cls(**kwargs)


def _unknown_key_message(full: str, key: str, fields: dict[str, Any], prefix: str) -> str:
    close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    valid = ", ".join(fields)
    return f"unknown key '{full}'{hint}; valid keys here: {valid}"


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            return None
        if isinstance(value, str) and str in non_none[1:]:  # list[int] | str: a word such as auto
            return value
        return _coerce(non_none[0], value, key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise DistillError(f"{key}: expected true or false, got {_shown(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise DistillError(f"{key}: expected an integer, got {_shown(value)}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise DistillError(f"{key}: expected a number, got {_shown(value)}")
        if not math.isfinite(number):
            raise DistillError(f"{key}: expected a finite number, got {_shown(value)}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise DistillError(f"{key}: expected a string, got {_shown(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise DistillError(f"{key}: expected a list, got {_shown(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise DistillError(f"{key}: expected a mapping, got {_shown(value)}")
        return {
            _coerce(args[0], k, f"{key} key"): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()
        }
    raise TypeError(f"unsupported config type {tp} for {key}")


def positive(key: str, value: float) -> None:
    if not value > 0:
        raise DistillError(f"{key}: must be > 0, got {value}")


def non_negative(key: str, value: float) -> None:
    if value < 0:
        raise DistillError(f"{key}: must be >= 0, got {value}")


SEED_MAX = 2**32 - 1  # numpy's seeds, which set_seed also sets


def seed(key: str, value: int) -> None:
    if not 0 <= value <= SEED_MAX:
        raise DistillError(f"{key}: a seed is a whole number from 0 to {SEED_MAX}, got {value}")


def in_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise DistillError(f"{key}: must be in [{low:g}, {high:g}], got {value}")


def one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DistillError(f"{key}: must be one of {', '.join(choices)}; got '{value}'{hint}")
