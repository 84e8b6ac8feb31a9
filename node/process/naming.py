"""Strict slugs for every output name built from free text (design rule 2), and unique-name suffixes."""

from __future__ import annotations

import re
import unicodedata

PLACEHOLDER = "unnamed"

# Letters, digits (any script, so CJK and accented names survive), and a few safe punctuation marks;
# everything else, including path separators, control and format characters, becomes "_".
_SAFE_PUNCT = frozenset("-_.+")
_RUNS = re.compile(r"_{2,}")
# Names Windows refuses whatever the extension; outputs may be copied to SMB shares.
_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))})


def _keep(ch: str) -> bool:
    if ch in _SAFE_PUNCT:
        return True
    category = unicodedata.category(ch)
    # L* letters, Nd decimal digits, M* combining marks (needed for NFC-irreducible scripts).
    return category[0] in ("L", "M") or category == "Nd"


def slug(text: str, max_len: int = 64) -> str:
    """Turn free text into a safe single path component.

    NFC-normalised; letters/digits of any script kept; whitespace and every other character become "_";
    runs of "_" collapse; no leading dots, no leading/trailing "_" or "."; at most max_len characters;
    an empty result (or a reserved device name) gives a fixed placeholder.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    text = unicodedata.normalize("NFC", str(text))
    out = "".join(ch if _keep(ch) else "_" for ch in text)
    out = _RUNS.sub("_", out).strip("._")
    # A run of dots could still read as ".." after truncation; collapse them too.
    out = re.sub(r"\.{2,}", ".", out)
    out = out[:max_len].rstrip("._")
    if not out:
        return PLACEHOLDER[:max_len]
    if out.split(".", 1)[0].lower() in _RESERVED:
        out = ("_" + out)[:max_len]
    return out


def unique_name(name: str, taken: set[str]) -> str:
    """Return name, or name_2, name_3, ... (the first not in taken, compared case-insensitively); add it to taken.

    Case-insensitive because outputs end up on case-insensitive file systems (macOS, SMB shares).
    """
    lowered = {t.lower() for t in taken}
    candidate = name
    n = 1
    while candidate.lower() in lowered:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate
