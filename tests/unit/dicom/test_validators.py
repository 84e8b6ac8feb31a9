"""UID and AE title validators: the only gate between attribute values and file names."""

from __future__ import annotations

import pytest

from node.dicom.validators import ae_title_problem, is_valid_uid, uid_problem


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.840.10008.1.2.1", "2.25.0", "1." + "1" * 62])
def test_valid_uids_are_accepted(uid):
    assert is_valid_uid(uid)
    assert uid_problem(uid) is None


@pytest.mark.parametrize(
    "uid",
    ["", "1", "1..2", "1.02.3", "1.2.3.", ".1.2", "1.2.a", "../../etc", "1.2/3", "1.2.3\x00", "1." + "1" * 63, None, 12],
)
def test_invalid_uids_are_refused(uid):
    assert not is_valid_uid(uid)
    assert uid_problem(uid) is not None


def test_ae_titles_follow_the_ae_vr():
    assert ae_title_problem("DICOMNODE") is None
    assert ae_title_problem("  ") is not None
    assert ae_title_problem("A\tB") is not None


@pytest.mark.parametrize("value", ["1.2.3\n", "1.2.3\r\n", "1.2.3\x00", " 1.2.3", "1.2.3 "])
def test_a_uid_with_a_trailing_newline_or_padding_is_invalid_everywhere(value: str) -> None:
    assert not is_valid_uid(value)
    assert uid_problem(value) is not None
