"""The C-STORE response encoded by hand is byte for byte the one pynetdicom's encoder gives."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode

from node.receive.fastpath import store_response


def _rsp(status: int, message_id: int, sop_class: str, sop_instance: str) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = message_id
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    return rsp


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC211, 0xB000])
@pytest.mark.parametrize(("sop_class", "sop_instance"), [
    ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5.6"),  # odd class UID, even instance UID
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.123456789012345678901234567890123456"),
])
@pytest.mark.parametrize("message_id", [1, 65535])
def test_a_plain_c_store_response_matches_pynetdicoms_encoding(status: int, sop_class: str, sop_instance: str,
                                                               message_id: int) -> None:
    rsp = _rsp(status, message_id, sop_class, sop_instance)
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert store_response(rsp) == encode(message.command_set, True, True)


def test_responses_with_an_error_comment_and_other_messages_are_left_to_pynetdicom() -> None:
    rsp = _rsp(0xC211, 7, "1.2.840.10008.5.1.4.1.1.4", "1.2.3")
    setattr(rsp, "ErrorComment", "could not store")  # noqa: B010 - typed None in pynetdicom
    assert store_response(rsp) is None
    request = C_STORE()
    request.MessageID = 7
    assert store_response(request) is None  # a request, not a response
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.Status = 0
    assert store_response(echo) is None


@pytest.mark.parametrize(("sop_class", "sop_instance", "syntax"), [
    ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5.6", "1.2.840.10008.1.2.1"),
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.123456789012345678901234567890123456",
     "1.2.840.10008.1.2.4.90"),
    ("1.2.840.10008.5.1.4.1.1.7", "2.25.1", "1.2.840.10008.1.2"),
])
def test_the_file_meta_written_in_front_of_a_received_dataset_matches_pydicoms(sop_class: str, sop_instance: str,
                                                                               syntax: str) -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID
    from pynetdicom.dsutils import create_file_meta

    from node.receive.fastpath import file_meta_bytes

    expected = DicomBytesIO()
    write_file_meta_info(expected, create_file_meta(sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance),
                                                    transfer_syntax=UID(syntax)))
    assert file_meta_bytes(sop_class, sop_instance, syntax) == expected.getvalue()
