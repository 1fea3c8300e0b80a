"""Tables and numbers as the report writes them, shared by every benchmark's part of it.

One place for these, so that every section says "16.1 ms", "0.964" or "n/a" the same way.
A figure a benchmark could not measure is NaN in its results; each formatter shows it as
`n/a`.
"""

from __future__ import annotations

import math

NOT_MEASURED = "n/a"
SMALL_RATIO = 0.01  # ratios below this get two significant digits: 0.0014, not 0.00
MS_PER_S = 1000
S_PER_MIN = 60


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table for the terminal."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def goal_ratio(value: float) -> str:
    """Two decimals; two significant digits below SMALL_RATIO, where decimals read 0.00."""
    return f"{value:.2g}" if 0 < abs(value) < SMALL_RATIO else f"{value:.2f}"


def fine_ratio(value: float) -> str:
    """Three decimals, or two significant digits below SMALL_RATIO (0.0014, not 0.001)."""
    if math.isnan(value):
        return NOT_MEASURED
    return f"{value:.2g}" if 0 < abs(value) < SMALL_RATIO else f"{value:.3f}"


def ratio(value: float) -> str:
    """Three decimals: `0.964`."""
    return NOT_MEASURED if math.isnan(value) else f"{value:.3f}"


def ms(value: float) -> str:
    """Milliseconds, one decimal: `16.1 ms`."""
    return NOT_MEASURED if math.isnan(value) else f"{value:.1f} ms"


def seconds(value: float) -> str:
    """Seconds, two decimals: `0.93 s`."""
    return NOT_MEASURED if math.isnan(value) else f"{value:.2f} s"


def ms_as_seconds(value: float | None) -> str:
    """Milliseconds shown as seconds, two decimals; None (never happened) reads `n/a`."""
    return NOT_MEASURED if value is None or math.isnan(value) else seconds(value / MS_PER_S)


def minutes(value: float) -> str:
    """Seconds shown as minutes, one decimal: `10.0 min`."""
    return NOT_MEASURED if math.isnan(value) else f"{value / S_PER_MIN:.1f} min"


def count(n: int, noun: str) -> str:
    """`1 DELETE`, `2 DELETEs`."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
