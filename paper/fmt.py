"""Formatting of numbers for LaTeX and Markdown: one place, so every table and macro agrees.

Rates are fractions in [0, 1] in ``results/`` and percentages in the paper; intervals are
printed without the per-cent sign, ``[low, high]``, after a rate that carries it.
"""

from __future__ import annotations

import math
import re

#: LaTeX macro names are letters only
_NAME = re.compile(r"^[A-Z][A-Za-z]*$")
#: characters LaTeX reads as commands, escaped in text
_ESCAPES = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "#": r"\#",
    "&": r"\&",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
#: small integers spelled out inside macro names (which cannot hold digits)
WORDS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten")


def macro_name(*parts: str | int) -> str:
    """``macro_name("Safety", "Twin", 2, "After")`` → ``SafetyTwinTwoAfter``; integers up to ten
    are spelled out, anything else that is not letters is an error (a name must be a valid macro)."""
    text = "".join(WORDS[p] if isinstance(p, int) else p for p in parts)
    if not _NAME.match(text):
        raise ValueError(f"not a LaTeX macro name (letters only, capitalised): {text!r}")
    return text


def check(value: float, what: str) -> float:
    """``value`` as a float, refusing NaN and infinities: a paper number must exist."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what}: not a finite number ({value})")
    return value


def fixed(value: float, digits: int = 2, what: str = "value", tex: bool = True) -> str:
    """Fixed-point, ``-0.0`` printed as ``0.0``; in LaTeX a minus sign is a math minus."""
    text = f"{check(value, what):.{digits}f}"
    if re.fullmatch(r"-0\.?0*", text):
        text = text[1:]
    return "\\ensuremath{-}" + text[1:] if tex and text.startswith("-") else text


def pct(rate: float, digits: int = 1, tex: bool = True) -> str:
    """A rate in [0, 1] as a percentage: ``0.97`` → ``97.0\\%`` (``97.0%`` with ``tex=False``)."""
    return fixed(100 * check(rate, "rate"), digits, tex=tex) + ("\\%" if tex else "%")


def interval(low: float, high: float, digits: int = 1, tex: bool = True) -> str:
    """A 95% interval of a rate, in percentage points: ``[95.3, 98.1]``."""
    return f"[{fixed(100 * low, digits, tex=tex)}, {fixed(100 * high, digits, tex=tex)}]"


def sci(value: float, digits: int = 1, tex: bool = True) -> str:
    """Scientific notation: ``2.6e-11`` → ``$2.6\\times10^{-11}$``; plain for 0.01 ≤ |v| < 1e4."""
    value = check(value, "value")
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    mantissa = value / 10**exponent
    if round(abs(mantissa), digits) >= 10:  # 9.96 → 10.0: carry into the exponent
        exponent, mantissa = exponent + 1, mantissa / 10
    if not tex:
        return f"{mantissa:.{digits}f}e{exponent}"
    return f"\\ensuremath{{{mantissa:.{digits}f}\\times10^{{{exponent}}}}}"


def power(value: float, tex: bool = True) -> str:
    """An exact power of ten, ``1e-4`` → ``$10^{-4}$`` (a setting such as a learning rate)."""
    exponent = round(math.log10(check(value, "power of ten")))
    if not math.isclose(10.0**exponent, value, rel_tol=1e-9):
        raise ValueError(f"not a power of ten: {value}")
    return f"\\ensuremath{{10^{{{exponent}}}}}" if tex else f"1e{exponent}"


def integer(value: float, what: str = "count") -> str:
    """A whole number (``1,000`` grouping from 10,000 on), refusing fractions."""
    value = check(value, what)
    if not math.isclose(value, round(value), abs_tol=1e-6):
        raise ValueError(f"{what}: not a whole number ({value})")
    n = round(value)
    return f"{n:,}".replace(",", "{,}") if abs(n) >= 10_000 else str(n)


def span(values, fmt) -> str:
    """``low–high`` of formatted values, or one value when they are equal once formatted."""
    values = sorted(check(v, "span") for v in values)
    low, high = fmt(values[0]), fmt(values[-1])
    return low if low == high else f"{low}--{high}"


def tex_text(text: str) -> str:
    """Plain text (a command, a column name) with LaTeX's special characters escaped."""
    return "".join(_ESCAPES.get(ch, ch) for ch in str(text))


def tt(text: str) -> str:
    """A command in typewriter type, escaped, breakable after commas, ``=``, ``_`` and ``/``."""
    body = tex_text(text)
    for mark in (",", "=", "\\_", "/"):
        body = body.replace(mark, mark + "\\allowbreak{}")
    return f"\\texttt{{{body}}}"
