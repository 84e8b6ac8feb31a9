"""What one association can make the node hold in memory, bounded as the bytes arrive, on TCP and on TLS.

pynetdicom bounds nothing itself: it buffers a DIMSE command's fragments, and the dataset of any message but
a C-STORE (those stream to a file), until their last fragment. A peer could send PDUs of legal size forever
(488 MiB of command fragments grew the node by 490 MiB). The tracker follows the PS3.8 framing of every byte
read from an accepted socket (PDU header, then the PDV items of each P-DATA-TF) and refuses, before buffering:

- a PDU longer than max_pdu (an A-ASSOCIATE-RQ longer than MAX_ASSOCIATE_RQ), and a first PDU that is not an
  A-ASSOCIATE-RQ;
- a command set longer than MAX_COMMAND_BYTES (real ones are a few hundred bytes);
- more than MAX_OTHER_DATA_BYTES of dataset for a message that is not a C-STORE-RQ (a C-ECHO has none).

A refusal raises PduTooLarge (an OSError) from recv(): pynetdicom's reader sees a broken connection, and
the association ends without anything of it acknowledged. TLS sockets get the same tracker through
SSLContext.sslsocket_class.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from typing import Any

MAX_ASSOCIATE_RQ = 128 * 1024
MAX_COMMAND_BYTES = 64 * 1024
MAX_OTHER_DATA_BYTES = 1 << 20
_C_STORE_RQ = 0x0001
_PDU_HEADER = struct.Struct(">BBL")
_PDV_HEADER = struct.Struct(">LBB")
_ELEMENT = struct.Struct("<HHL")
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class PduTooLarge(OSError):
    """A peer sent more than one association may make us hold; the association is dropped."""


def command_field(command_set: bytes) -> int | None:
    """CommandField (0000,0100) of an implicit VR little endian command set, or None."""
    offset = 0
    while offset + 8 <= len(command_set):
        group, element, length = _ELEMENT.unpack_from(command_set, offset)
        offset += 8
        if (group, element) == (0x0000, 0x0100) and length == 2 and offset + 2 <= len(command_set):
            return int(struct.unpack_from("<H", command_set, offset)[0])
        if group != 0x0000:
            return None
        offset += length
    return None


class PduTracker:
    """Follows the PDU and PDV framing of one connection's incoming bytes; raises PduTooLarge past a bound."""

    def __init__(self, max_pdu: int) -> None:
        self.max_pdu = max_pdu
        self._first = True
        self._header = bytearray()  # PDU header being read
        self._body_left = 0
        self._pdu_type = 0
        self._pdv_header = bytearray()
        self._pdv_left = 0
        self._pdv_command = False
        self._pdv_last = False
        self._command = bytearray()
        self._command_done = True
        self._is_store = False
        self._other_data = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._body_left == 0:
                take = min(6 - len(self._header), len(view))
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == 6:
                    self._start_pdu()
                continue
            take = min(self._body_left, len(view))
            if self._pdu_type == 0x04:
                self._pdata(view[:take])
            self._body_left -= take
            view = view[take:]
            if self._body_left == 0 and self._pdu_type == 0x04 and (self._pdv_left or self._pdv_header):
                raise PduTooLarge("P-DATA-TF ends inside a PDV item")

    def _start_pdu(self) -> None:
        pdu_type, _, length = _PDU_HEADER.unpack(self._header)
        self._header.clear()
        if self._first and pdu_type != 0x01:
            raise PduTooLarge(f"first PDU is type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ")
        self._first = False
        limit = MAX_ASSOCIATE_RQ if pdu_type == 0x01 else self.max_pdu + 64
        if length > limit:
            raise PduTooLarge(f"PDU type 0x{pdu_type:02X} declares {length} bytes (limit {limit})")
        self._pdu_type, self._body_left = pdu_type, length

    def _pdata(self, view: memoryview) -> None:
        while view:
            if self._pdv_left == 0:
                take = min(6 - len(self._pdv_header), len(view))
                self._pdv_header += view[:take]
                view = view[take:]
                if len(self._pdv_header) == 6:
                    self._start_pdv()
                continue
            take = min(self._pdv_left, len(view))
            self._pdv_bytes(view[:take])
            self._pdv_left -= take
            view = view[take:]
            if self._pdv_left == 0:
                self._end_pdv()

    def _start_pdv(self) -> None:
        length, _context, control = _PDV_HEADER.unpack(self._pdv_header)
        self._pdv_header.clear()
        if length < 2 or length - 2 > self._body_left:
            raise PduTooLarge(f"PDV item of {length} bytes does not fit its P-DATA-TF")
        self._pdv_command, self._pdv_last = bool(control & 0x01), bool(control & 0x02)
        if self._pdv_command and self._command_done:
            # A new message: its command starts; the previous message's accounting is over.
            self._command.clear()
            self._command_done, self._is_store, self._other_data = False, False, 0
        self._pdv_left = length - 2
        if self._pdv_left == 0:
            self._end_pdv()

    def _pdv_bytes(self, chunk: memoryview) -> None:
        if self._pdv_command:
            if len(self._command) + len(chunk) > MAX_COMMAND_BYTES:
                raise PduTooLarge(f"DIMSE command set longer than {MAX_COMMAND_BYTES} bytes")
            self._command += chunk
        elif not self._is_store:
            self._other_data += len(chunk)
            if self._other_data > MAX_OTHER_DATA_BYTES:
                raise PduTooLarge(f"more than {MAX_OTHER_DATA_BYTES} bytes of dataset for a message that is not "
                                  "a C-STORE (only C-STORE datasets stream to disk)")

    def _end_pdv(self) -> None:
        if self._pdv_command and self._pdv_last:
            self._command_done = True
            self._is_store = command_field(bytes(self._command)) == _C_STORE_RQ
            self._command.clear()


class GuardedSocket(socket.socket):
    """An accepted TCP socket that acknowledges promptly and bounds what the peer can make us buffer.

    TCP_QUICKACK is re-armed after every read (Linux clears it), so a sender whose Nagle algorithm waits for
    our ACK is not stalled ~40 ms per message by delayed ACKs.
    """

    tracker: PduTracker

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if _TCP_QUICKACK is not None and data:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        if not flags & socket.MSG_PEEK:
            self.tracker.feed(data)
        return data


class GuardedSSLSocket(ssl.SSLSocket):
    """The TLS counterpart (installed as the server context's sslsocket_class); bytes the screen read ahead
    (the A-ASSOCIATE-RQ) are served first, and count as pending so pynetdicom's select-based wait sees them."""

    tracker: PduTracker | None = None
    prebuffer: bytes = b""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if self.prebuffer:
            data, self.prebuffer = self.prebuffer[:buflen], self.prebuffer[buflen:]
            return data
        data = super().recv(buflen, flags)
        if self.tracker is not None:
            self.tracker.feed(data)
        return data

    def pending(self) -> int:
        return len(self.prebuffer) + super().pending()


def guard(sock: socket.socket, max_pdu: int, timeout: float) -> socket.socket:
    """Give an accepted socket its tracker: a plain one is re-wrapped as a GuardedSocket."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if isinstance(sock, ssl.SSLSocket):
        if isinstance(sock, GuardedSSLSocket):
            sock.tracker = PduTracker(max_pdu)
        sock.settimeout(timeout)
        return sock
    guarded = GuardedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    guarded.tracker = PduTracker(max_pdu)
    guarded.settimeout(timeout)
    return guarded


def install_tls(context: Any) -> None:
    """TLS sockets accepted with this context are GuardedSSLSockets."""
    context.sslsocket_class = GuardedSSLSocket
