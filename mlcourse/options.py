"""Experiment options: declared once in a config dataclass, checked once, for the CLI and Python.

Each field of an experiment's config is declared with :func:`option`, which records its help
text and the values it accepts. :func:`check_config` (called by every config's
``__post_init__``) then turns a bad value into one sentence that names the option and what it
accepts, whether it came from ``mlcourse train --k-query 0`` or from ``SineConfig(k_query=0)``.
The ``argparse`` types below do the same for options that are not config fields (``eval``'s).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from dataclasses import field
from typing import Any


class OptionError(ValueError):
    """An option's value is not one it accepts (the command line exits with status 2)."""


def option(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    above: float | None = None,
    max: float | None = None,
    choices: tuple | None = None,
    widths: bool = False,
):
    """A config field with its help text and the values it accepts.

    Args:
        default: the field's default; its type (bool, int, float, str) is the field's type.
        help: one line for ``--help``.
        min: smallest value accepted (inclusive).
        above: values must be greater than this (exclusive), e.g. 0 for a step size.
        max: largest value accepted (inclusive).
        choices: the accepted values of a string option.
        widths: a string of comma-separated positive layer widths, e.g. ``"40,40"``.
    """
    meta = {"help": help, "min": min, "above": above, "max": max, "choices": choices}
    return field(default=default, metadata={**meta, "widths": widths})


def flag(name: str) -> str:
    """The command-line spelling of config field ``name``: ``k_query`` → ``--k-query``."""
    return "--" + name.replace("_", "-")


def parse_widths(text: str, name: str = "hidden") -> tuple[int, ...]:
    """``"40,40"`` → ``(40, 40)``; anything but comma-separated positive integers is refused.

    >>> parse_widths("64, 32")
    (64, 32)
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise OptionError(
            f"{name} ({flag(name)}) must be comma-separated positive layer widths such as "
            f"40,40; got {text!r}"
        )
    return tuple(int(p) for p in parts)


def _check_type(name: str, value, kind: type):
    """``value`` as a ``kind`` (an int may stand for a float), or a ValueError."""
    what = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, numbers.Integral) and not isinstance(value, bool),
        float: isinstance(value, numbers.Real) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(kind, True)
    if not ok:
        raise OptionError(f"{name} ({flag(name)}) must be {what[kind]}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise OptionError(f"{name} ({flag(name)}) must be a finite number, got {value!r}")
    return kind(value) if kind in (int, float) else value


def check_config(config) -> None:
    """Checks every field of a config dataclass against its :func:`option` declaration.

    Integral and real values are normalised to Python ``int`` and ``float`` (a NumPy integer
    becomes an ``int``). Raises ValueError naming the option, the accepted values and the value
    given.
    """
    for f in dataclasses.fields(config):
        name, meta = f.name, f.metadata
        value = _check_type(name, getattr(config, name), type(f.default))
        object.__setattr__(config, name, value)
        if meta.get("min") is not None and value < meta["min"]:
            raise OptionError(f"{name} ({flag(name)}) must be at least {meta['min']}, got {value}")
        if meta.get("above") is not None and value <= meta["above"]:
            raise OptionError(
                f"{name} ({flag(name)}) must be greater than {meta['above']}, got {value}"
            )
        if meta.get("max") is not None and value > meta["max"]:
            raise OptionError(f"{name} ({flag(name)}) must be at most {meta['max']}, got {value}")
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise OptionError(
                f"{name} ({flag(name)}) must be one of {', '.join(meta['choices'])}; got {value!r}"
            )
        if meta.get("widths"):
            parse_widths(value, name)


def _number(text: str, kind: type, low: float, strict: bool, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value < low or (strict and value == low):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """``argparse`` type: a whole number ≥ 1."""
    return _number(text, int, 1, False, "a whole number of at least 1")


def nonnegative_int(text: str) -> int:
    """``argparse`` type: a whole number ≥ 0."""
    return _number(text, int, 0, False, "a whole number of at least 0")


def positive_float(text: str) -> float:
    """``argparse`` type: a finite number > 0."""
    return _number(text, float, 0.0, True, "a finite number greater than 0")


def nonnegative_float(text: str) -> float:
    """``argparse`` type: a finite number ≥ 0."""
    return _number(text, float, 0.0, False, "a finite number of at least 0")
