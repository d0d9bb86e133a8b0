"""The one parser of non-negative decimal integers taken from the network.

`str.isdigit()` accepts `²` and other Unicode digits that `int()` refuses, and `int()` of
more than 4300 digits raises; both once became 500s. Here: ASCII `0-9` only, at most
`max_digits` of them (18 keeps every value below 2**63), anything else is None.
"""

from __future__ import annotations

import re

MAX_DIGITS = 18

_DECIMAL = re.compile(r"[0-9]+", re.ASCII)


def parse_decimal(raw: str | None, max_digits: int = MAX_DIGITS) -> int | None:
    """The value of `raw` if it is 1..max_digits ASCII digits, else None."""
    if raw is None or len(raw) > max_digits or _DECIMAL.fullmatch(raw) is None:
        return None
    return int(raw)
