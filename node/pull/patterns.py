"""Series description patterns from request files, matched in linear time (RE2).

A request file is untrusted input: Python's backtracking `re` takes exponential time on a pattern such as
`(.*.*)*z` and holds the GIL while it does, which froze the whole node, receiver included. RE2 guarantees
time linear in the text and refuses the features that need backtracking (backreferences, lookaround), with
a message the request's error file quotes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2

MAX_PATTERN_CHARS = 1000
_MAX_MEM = 8 << 20  # what one compiled pattern may use


def _options() -> Any:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = _MAX_MEM
    return options


def problem(pattern: object) -> str | None:
    """Why a request's pattern is refused, or None."""
    if not isinstance(pattern, str):
        return "not a string"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"longer than {MAX_PATTERN_CHARS} characters"
    try:
        _compiled(pattern)
    except re2.error as exc:
        detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        return f"not a regular expression RE2 accepts ({detail}; backreferences and lookaround are not supported)"
    return None


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    return re2.compile(pattern, _options())


def search(pattern: str, text: str) -> bool:
    """Case-insensitive search of a validated pattern, in time linear in the text."""
    return _compiled(pattern).search(text) is not None
