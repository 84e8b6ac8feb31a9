"""Person names and text decoded by their declared character set, and the fallback when it is missing or wrong."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pydicom.data
import pytest

from node.dicom.charset import FALLBACK_ENCODINGS, decode_text, normalise_charsets

CHARSET_FILES = Path(pydicom.data.__file__).parent / "charset_files"


def raw_value(name: str, keyword: str = "PatientName") -> tuple[bytes, list[str]]:
    """The undecoded bytes of an element of one of pydicom's charset sample files, and its declaration."""
    ds = pydicom.dcmread(CHARSET_FILES / name, stop_before_pixels=True)
    raw = ds.get_item(keyword)
    assert raw is not None and isinstance(raw.value, bytes), f"{name}: {keyword} is not raw"
    return raw.value, normalise_charsets(ds.get("SpecificCharacterSet"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chrX2.dcm", "Wang^XiaoDong=王^小东="),  # GB18030
        ("chrX1.dcm", "Wang^XiaoDong=王^小東="),  # ISO_IR 192
        ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう"),  # ISO 2022 IR 87
        ("chrH32.dcm", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"),  # ISO 2022 IR 13 + 87
        ("chrI2.dcm", "Hong^Gildong=洪^吉洞=홍^길동"),  # ISO 2022 IR 149
        ("chrFren.dcm", "Buc^Jérôme"),  # ISO_IR 100
        ("chrRuss.dcm", "Люкceмбypг"),  # ISO_IR 144
        ("chrGreek.dcm", "Διονυσιος"),  # ISO_IR 126
    ],
)
def test_a_name_decodes_by_its_declared_character_set_without_a_flag(name: str, expected: str) -> None:
    raw, declared = raw_value(name)
    decoded = decode_text(raw, declared, "PN")
    assert decoded.text == expected
    assert decoded.fallback is None
    # pydicom, decoding the same element its own way, agrees.
    assert str(pydicom.dcmread(CHARSET_FILES / name).PatientName) == expected.rstrip("=")


def test_gb18030_bytes_without_a_declaration_decode_as_gb18030_and_are_flagged() -> None:
    raw = "王^小东".encode("gb18030")
    decoded = decode_text(raw, [], "PN")
    assert decoded.text == "王^小东"
    assert decoded.fallback == "no SpecificCharacterSet; decoded as gb18030"


def test_utf8_bytes_under_a_latin1_declaration_are_decoded_as_utf8_and_flagged() -> None:
    raw = "Müller^José=王^小東".encode()
    decoded = decode_text(raw, ["ISO_IR 100"], "PN")
    assert decoded.text == "Müller^José=王^小東"
    assert decoded.fallback == "SpecificCharacterSet 'ISO_IR 100' but bytes are UTF-8"


def test_bytes_the_declared_utf8_cannot_decode_fall_back_to_gb18030_and_are_flagged() -> None:
    raw = "张^伟".encode("gbk")
    decoded = decode_text(raw, ["ISO_IR 192"], "PN")
    assert decoded.text == "张^伟"
    assert decoded.fallback is not None
    assert decoded.fallback.startswith("SpecificCharacterSet 'ISO_IR 192' does not decode the value")


def test_an_unknown_declaration_is_treated_as_missing_and_flagged() -> None:
    decoded = decode_text("Jérôme".encode(), ["ISO_IR 999"], "LO")
    assert decoded.text == "Jérôme"
    assert decoded.fallback == "unknown SpecificCharacterSet 'ISO_IR 999'; decoded as utf-8"


def test_latin1_is_the_last_resort_and_never_fails() -> None:
    assert FALLBACK_ENCODINGS[-1] == "latin-1"
    raw = b"\xff\xfe\xfd"  # valid in no multi-byte encoding we try
    decoded = decode_text(raw, [], "LO")
    assert decoded.text == "ÿþý"
    assert decoded.fallback == "no SpecificCharacterSet; decoded as latin-1"


def test_ascii_needs_no_declaration_and_is_not_flagged() -> None:
    decoded = decode_text(b"DOE^JOHN ", [], "PN")
    assert decoded == decoded.__class__("DOE^JOHN", None)


def test_iso2022_escapes_without_a_declaration_still_decode_and_are_flagged() -> None:
    raw, _ = raw_value("chrH31.dcm")
    decoded = decode_text(raw, [], "PN")
    assert decoded.text == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert decoded.fallback == "no SpecificCharacterSet; decoded as iso2022_jp_2"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, []), ("", []), ("ISO_IR 100", ["ISO_IR 100"]), (["", "ISO 2022 IR 87"], ["", "ISO 2022 IR 87"])],
)
def test_specific_character_set_is_normalised_to_a_list_of_terms(value: object, expected: list[str]) -> None:
    assert normalise_charsets(value) == expected
