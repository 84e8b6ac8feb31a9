"""Tests of the strict slug and unique-name helpers used for every output name built from free text."""

from __future__ import annotations

import unicodedata

import pytest

from node.process.naming import PLACEHOLDER, slug, unique_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("t1_tse_tra", "t1_tse_tra"),
        ("T2 TSE  sag", "T2_TSE_sag"),
        ("../../etc/passwd", "etc_passwd"),
        ("a/b\\c", "a_b_c"),
        ("...hidden", "hidden"),
        ("ep2d_diff\x00\x1b[31m", "ep2d_diff_31m"),
        ("头部 平扫", "头部_平扫"),
        ("Müller^Hans", "Müller_Hans"),
        ("  ", PLACEHOLDER),
        ("", PLACEHOLDER),
        ("***", PLACEHOLDER),
        ("CON", "_CON"),
        ("a..b", "a.b"),
    ],
)
def test_slug_turns_free_text_into_one_safe_path_component(text: str, expected: str) -> None:
    assert slug(text) == expected


def test_slug_normalises_to_nfc_so_equal_names_compare_equal() -> None:
    decomposed = unicodedata.normalize("NFD", "Séquence")
    assert slug(decomposed) == "Séquence"
    assert unicodedata.is_normalized("NFC", slug(decomposed))


def test_slug_never_returns_separators_control_characters_or_leading_dots() -> None:
    nasty = "".join(chr(c) for c in range(0, 0x250)) + "\u202e\u200b/\\:*?\"<>|"
    out = slug(nasty, max_len=500)
    assert "/" not in out and "\\" not in out
    assert not any(unicodedata.category(ch).startswith("C") for ch in out)
    assert not out.startswith(".")


def test_slug_respects_max_len_without_a_trailing_separator() -> None:
    out = slug("a" * 10 + " " + "b" * 100, max_len=11)
    assert out == "a" * 10
    assert len(slug("x" * 500)) == 64


def test_slug_refuses_a_useless_length() -> None:
    with pytest.raises(ValueError, match="max_len"):
        slug("abc", max_len=0)


def test_unique_name_adds_deterministic_suffixes_and_records_the_name() -> None:
    taken: set[str] = set()
    assert [unique_name("3_t1", taken) for _ in range(3)] == ["3_t1", "3_t1_2", "3_t1_3"]
    assert taken == {"3_t1", "3_t1_2", "3_t1_3"}


def test_unique_name_treats_names_differing_only_in_case_as_taken() -> None:
    taken = {"3_T1"}
    assert unique_name("3_t1", taken) == "3_t1_2"
