"""Event-driven waits for pynetdicom's polling reactors on the node's acceptor associations.

pynetdicom's association and DUL threads poll with `time.sleep(0.001)` between checks, so every hop of a
C-STORE (PDU read -> DIMSE message -> handler -> response -> socket) waits out at least one tick, several
milliseconds per instance on a busy machine. We keep pynetdicom's loops and their timing semantics, but
let a sleeping thread wake as soon as the thing it polls for is there:

* the DUL thread waits in select() on its socket and on a doorbell (an eventfd) rung whenever another thread
  gives it something to do (a primitive to send, an event, its end), instead of sleeping blindly: a C-STORE
  response leaves the moment it is queued, not at the next 1 ms tick;
* the association thread waits on its DIMSE message queue's condition, also notified when the DUL hands it an
  association primitive (a release or abort request).

A C-STORE response (the fixed command set of PS3.7 9.3.1.2: class and instance UIDs, message ID, status) is
encoded here with struct, not through a pydicom Dataset: the same bytes (checked against pynetdicom's encoder
in tests/unit/receive/test_fastpath.py), a tenth of the response's cost. Anything else, and any response that
carries an error comment or offending element, goes through pynetdicom.

Likewise the Part 10 file meta pynetdicom writes in front of every received dataset (file_meta_bytes: the same
bytes as pydicom's write_file_meta_info of pynetdicom's create_file_meta, without building a FileMetaDataset).

Because every reason to wake is signalled, an idle thread can wait far longer than pynetdicom's 1 ms tick
(IDLE_WAIT_S): an idle association costs 2 x 50 wake-ups a second instead of 2 x 1000, and with several busy
associations in one process their threads no longer take the GIL from each other a thousand times a second.
What is still polled (ARTIM and idle timers, a dead DUL thread) is seen within IDLE_WAIT_S. Threads that did not
opt in (the node's own SCU associations, anything else) get the real `time.sleep`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import struct
import threading
import time as _time
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

from pydicom.filewriter import write_file_meta_info as _write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom import association as _association
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import dul as _dul
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_real_sleep = _time.sleep
IDLE_WAIT_S = 0.02


class _TimeProxy(ModuleType):
    """Stands in for the `time` module inside pynetdicom's association and dul modules."""

    def __init__(self) -> None:
        super().__init__("time")

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        waiter: Callable[[float], None] | None = getattr(threading.current_thread(), "_node_wait", None)
        if waiter is None:
            _real_sleep(seconds)
        else:
            waiter(seconds)


_installed = False


def install() -> None:
    """Route pynetdicom's reactor sleeps through the proxy, and its file meta through file_meta_bytes
    (idempotent)."""
    global _installed
    if _installed:
        return
    proxy = _TimeProxy()
    _association.time = proxy
    _dul.time = proxy
    _dimse_messages.create_file_meta = _create_file_meta  # type: ignore[assignment]
    _dimse_messages.write_file_meta_info = _write_meta  # type: ignore[assignment]
    _installed = True


class _Meta(NamedTuple):
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN", b"SQ"):
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The file meta group (after the preamble and "DICM") pynetdicom writes for a received dataset."""
    body = b"".join((
        _element(2, 0x0001, b"OB", b"\x00\x01"),
        _element(2, 0x0002, b"UI", _padded(str(sop_class_uid), b"\0")),
        _element(2, 0x0003, b"UI", _padded(str(sop_instance_uid), b"\0")),
        _element(2, 0x0010, b"UI", _padded(str(transfer_syntax), b"\0")),
        _element(2, 0x0012, b"UI", _padded(str(PYNETDICOM_IMPLEMENTATION_UID), b"\0")),
        _element(2, 0x0013, b"SH", _padded(str(PYNETDICOM_IMPLEMENTATION_VERSION), b" ")),
    ))
    return _element(2, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def _create_file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, **_: Any) -> _Meta:
    return _Meta(sop_class_uid, sop_instance_uid, transfer_syntax)


def _write_meta(fp: Any, meta: Any, enforce_standard: bool = True) -> None:
    if isinstance(meta, _Meta):
        fp.write(file_meta_bytes(*meta))
    else:
        _write_file_meta_info(fp, meta, enforce_standard)


_UL = struct.Struct("<HHII")
_US = struct.Struct("<HHIH")


def _uid(element: int, value: object) -> bytes:
    raw = str(value).encode("ascii")
    if len(raw) % 2:
        raw += b"\0"  # UI values are padded to even length with NUL (PS3.5 6.2)
    return struct.pack("<HHI", 0x0000, element, len(raw)) + raw


def store_response(primitive: Any) -> bytes | None:
    """The implicit VR little endian command set of a plain C-STORE response, or None when it is not one."""
    if (not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None
            or primitive.Status is None or primitive.AffectedSOPClassUID is None
            or primitive.AffectedSOPInstanceUID is None
            or getattr(primitive, "ErrorComment", None) is not None
            or getattr(primitive, "OffendingElement", None) is not None):
        return None
    body = b"".join((
        _uid(0x0002, primitive.AffectedSOPClassUID),
        _US.pack(0x0000, 0x0100, 2, 0x8001),  # CommandField: C-STORE-RSP
        _US.pack(0x0000, 0x0120, 2, int(primitive.MessageIDBeingRespondedTo)),
        _US.pack(0x0000, 0x0800, 2, 0x0101),  # CommandDataSetType: no data set
        _US.pack(0x0000, 0x0900, 2, int(primitive.Status)),
        _uid(0x1000, primitive.AffectedSOPInstanceUID),
    ))
    return _UL.pack(0x0000, 0x0000, 4, len(body)) + body


def _ringing(q: queue.Queue[Any], ring: Callable[[], None]) -> None:
    """Make q.put() ring a doorbell after queueing (an instance attribute shadows Queue.put)."""
    put = q.put

    def put_and_ring(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        ring()

    q.put = put_and_ring  # type: ignore[method-assign]


def accelerate(assoc: Any) -> None:
    """Give an acceptor association (and its DUL thread) event-driven waits. Call before assoc.start()."""
    msg_queue = assoc.dimse.msg_queue
    dul = assoc.dul
    bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    weakref.finalize(dul, os.close, bell)

    def ring_dul() -> None:
        with contextlib.suppress(OSError):
            os.eventfd_write(bell, 1)

    def ring_assoc() -> None:
        with msg_queue.not_empty:
            msg_queue.not_empty.notify_all()

    _ringing(dul.to_provider_queue, ring_dul)
    _ringing(dul.event_queue, ring_dul)
    _ringing(dul.to_user_queue, ring_assoc)
    kill_dul = dul.kill_dul

    def kill_and_ring() -> None:
        kill_dul()
        ring_dul()

    dul.kill_dul = kill_and_ring
    user_queue = dul.to_user_queue

    def assoc_wait(seconds: float) -> None:
        with msg_queue.not_empty:
            if not msg_queue._qsize() and not user_queue.qsize():
                msg_queue.not_empty.wait(max(seconds, IDLE_WAIT_S))

    def dul_wait(seconds: float) -> None:
        sock = getattr(getattr(dul, "socket", None), "socket", None)
        if sock is None or dul.to_provider_queue.qsize() or dul.event_queue.qsize():
            _real_sleep(0 if sock is not None else seconds)
            return
        try:
            readable, _, _ = select.select([sock, bell], [], [], max(seconds, IDLE_WAIT_S))
        except (OSError, ValueError):
            _real_sleep(seconds)
            return
        if bell in readable:
            with contextlib.suppress(OSError):
                os.eventfd_read(bell)

    dimse = assoc.dimse
    send_msg = dimse.send_msg

    def send_fast(primitive: Any, context_id: int) -> None:
        command = store_response(primitive)
        max_pdu = dimse.maximum_pdu_size
        if command is None or (max_pdu and len(command) + 7 > max_pdu):
            send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # command, last fragment
        dul.send_pdu(pdata)

    dimse.send_msg = send_fast
    assoc._node_wait = assoc_wait
    dul._node_wait = dul_wait
