"""argparse types for numbers with bounds: a value outside them is refused with the range in the message."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def within_range(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse type: a float in [lo, hi], or a clear error naming the range."""
    def parse(text: str) -> float:
        value = float(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is outside [{lo:g}, {hi:g}]")
        return value
    return parse


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi], or a clear error naming the range."""
    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text} is outside [{lo}, {hi}]")
        return value
    return parse
