"""Keywords in free-text DICOM names (SeriesDescription, ProtocolName...), matched on token boundaries."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex alternation shaped as a trie: Python's re tries branches one by one, a trie prunes early."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:
            # Optional and greedy: the longer keyword is tried first, the shorter one on backtracking.
            return f"(?:{body})?"
        return body

    return build(trie)


def keyword_regex(keywords: Iterable[str]) -> str:
    """Regex of a keyword list: ASCII alphanumeric edges of a keyword must not touch other ASCII alphanumerics
    (so 'fs' matches 't1_vibe_fs' but not 'fspgr'); CJK edges match anywhere; 're:' entries are raw regexes."""
    by_edges: dict[tuple[bool, bool], list[str]] = {}
    raw: list[str] = []
    for keyword in keywords:
        if keyword.startswith("re:"):
            raw.append(f"(?:{keyword[3:]})")
        elif keyword:
            kw = keyword.lower()
            by_edges.setdefault((_is_word_char(kw[0]), _is_word_char(kw[-1])), []).append(kw)
    parts = []
    for (left, right), words in sorted(by_edges.items()):
        body = _trie_pattern(words)
        parts.append(("(?<![a-z0-9])" if left else "") + f"(?:{body})" + ("(?![a-z0-9])" if right else ""))
    return "|".join(parts + raw)


class KeywordSet:
    """A compiled keyword list; find() returns the matched text (for evidence) or None."""

    __slots__ = ("_regex", "keywords")

    def __init__(self, keywords: Iterable[str]) -> None:
        self.keywords = tuple(keywords)
        pattern = keyword_regex(self.keywords)
        self._regex = re.compile(pattern) if pattern else None

    def find(self, text: str) -> str | None:
        if self._regex is None or not text:
            return None
        m = self._regex.search(text)
        return m.group(0) if m else None
