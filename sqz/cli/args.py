"""The argument types every `sqz` command shares, written once: a number in a range,
a comma-separated list of them, and a parser whose errors are one line."""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

__all__ = ["Parser", "number", "list_of", "positive_int", "non_negative_int", "positive_float", "non_negative_float",
           "share", "bits_list", "thresholds_list"]  # fmt: skip


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line naming the option (no usage block), and
    ``--help`` ends with the command's example lines (sqz/cli/examples.py), kept as
    written: argparse would re-wrap an epilog into one paragraph."""

    examples: tuple[str, ...] = ()

    def format_help(self) -> str:
        text = super().format_help()
        if self.examples:
            text += "\nexamples:\n" + "".join(f"  {line}\n" for line in self.examples)
        return text

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _interval(minimum: float | None, maximum: float | None, above: float | None, below: float | None) -> str:
    low = f"[{minimum:g}" if minimum is not None else f"({above:g}" if above is not None else "(-inf"
    high = f"{maximum:g}]" if maximum is not None else f"{below:g})" if below is not None else "inf)"
    return f"in {low}, {high}"


def number(kind: type = float, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, below: float | None = None) -> Callable[[str], Any]:  # fmt: skip
    """An argparse type: ``kind`` (int or float, finite) within the bounds (minimum /
    maximum inclusive, above / below exclusive); a bad value is an ArgumentTypeError."""
    what = "an integer" if kind is int else "a number"
    if minimum is not None and maximum is None and above is None and below is None:
        rule = f"at least {minimum:g}" if kind is int else f">= {minimum:g}"
    elif above == 0 and minimum is None and maximum is None and below is None:
        rule = "positive"
    else:
        rule = _interval(minimum, maximum, above, below)

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        inside = (
            math.isfinite(value)
            and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
            and (above is None or value > above) and (below is None or value < below)
        )  # fmt: skip
        if not inside:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = "integer" if kind is int else "number"  # argparse names the type in its messages
    return parse


def list_of(item: Callable[[str], Any]) -> Callable[[str], tuple]:
    """An argparse type: a comma- (or space-) separated list, each item parsed by ``item``."""

    def parse(text: str) -> tuple:
        values = []
        for part in filter(None, (p.strip() for p in text.replace(" ", ",").split(","))):
            try:
                values.append(item(part))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"{part}: {exc}") from None
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        return tuple(values)

    parse.__name__ = "list"
    return parse


def one_of(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"must be {' or '.join(allowed)}")
        return text

    return parse


positive_int = number(int, minimum=1)
non_negative_int = number(int, minimum=0)
positive_float = number(float, above=0)
non_negative_float = number(float, minimum=0)
share = number(float, above=0, maximum=1)  # a fraction in (0, 1]
bits_list = list_of(number(int, minimum=1, maximum=8))
thresholds_list = list_of(number(float, minimum=0))
