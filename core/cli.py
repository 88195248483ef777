"""What every command line shares: a parser whose errors are one `hemolens:` line (exit 2), and argparse
types that refuse a bad value up front instead of letting it fail deep inside a run."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `hemolens: <message>` on stderr, exit status 2, no usage block."""

    def error(self, message: str):
        print(f"hemolens: {message}", file=sys.stderr)
        self.exit(2)


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            if int(text) >= minimum:
                return int(text)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
    return parse


def _float_where(test: Callable[[float], bool], wanted: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            if math.isfinite(float(text)) and test(float(text)):   # nan and inf are never a usable amount
                return float(text)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)   # seeds: numpy refuses negative ones
positive_float = _float_where(lambda v: v > 0, "a finite number > 0")
non_negative_float = _float_where(lambda v: v >= 0, "a finite number >= 0")
unit_float = _float_where(lambda v: 0 <= v <= 1, "a number between 0 and 1")


def name_list(text: str) -> list[str]:
    """A comma-separated list with at least one name, stripped."""
    found = [name.strip() for name in text.split(",") if name.strip()]
    if not found:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return found


def unit_range(text: str) -> tuple[float, float]:
    """'LO,HI' with 0 <= LO <= HI <= 1."""
    try:
        lo, hi = map(unit_float, text.split(","))
        if lo <= hi:
            return lo, hi
    except (argparse.ArgumentTypeError, ValueError):   # ValueError: not two values
        pass
    raise argparse.ArgumentTypeError(f"expected LO,HI with 0 <= LO <= HI <= 1, got {text!r}")


def folder(text: str) -> str:
    """An output folder: absent (it will be made) or a folder, never an existing file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return text


def existing_file(text: str) -> Path:
    """An input file that is there."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    return Path(text)
