"""Bounds on every number a payload may carry, so that no value that passes validation can fail a
database write, a date conversion or a JSON response downstream (year 10000, 1e300, Infinity and
10**30 all have).

Times are seconds since the epoch up to 2100-01-01 (replayed clips use small clip seconds, so the
lower bound is 0); counters fit a double exactly (2**53, also JavaScript's safe integers); every
float is finite. Free-form JSON objects (configs) get the same rules for each number inside.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, Field

MAX_TIMESTAMP = 4_102_444_800.0  # 2100-01-01T00:00:00Z
MAX_COUNTER = 2**53
MAX_DURATION_S = 10 * 366 * 86400.0  # ten years
MAX_JSON_DEPTH = 16
# The longest integer literal a JSON payload may spell (2**53 has 16 digits): refused while parsing,
# before Python turns a 10,000-digit literal into an int.
MAX_INT_DIGITS = 19

Timestamp = Annotated[float, Field(ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False,
                                   description="seconds since the epoch, before 2100 (clip seconds in replay)")]
Counter = Annotated[int, Field(ge=0, le=MAX_COUNTER)]
Duration = Annotated[float, Field(ge=0, le=MAX_DURATION_S, allow_inf_nan=False)]


def check_json_numbers(value: Any, depth: int = 0) -> Any:
    """Refuse non-finite floats, integers beyond ±2**53 and nesting deeper than MAX_JSON_DEPTH."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_COUNTER:
            raise ValueError(f"integer {value:.3g} is beyond ±2**53")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"number {value} is not finite")
        return value
    if isinstance(value, dict):
        for item in value.values():
            check_json_numbers(item, depth + 1)
        return value
    if isinstance(value, list):
        for item in value:
            check_json_numbers(item, depth + 1)
        return value
    raise ValueError(f"not a JSON value: {type(value).__name__}")


JsonObject = Annotated[dict[str, Any], AfterValidator(check_json_numbers)]


def refuse_constant(name: str) -> float:
    """`json.loads(parse_constant=...)`: Infinity, -Infinity and NaN are not JSON numbers."""
    raise ValueError(f"non-finite number {name} refused")


def bounded_int(text: str) -> int:
    """`json.loads(parse_int=...)`: refuse absurdly long integer literals before converting them."""
    digits = text.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError(f"integer with {len(digits)} digits refused (at most {MAX_INT_DIGITS})")
    return int(text)
