"""Unit tests of the connection guards: GuardedSocket PDU framing and the first-PDU screen, on loopback TCP pairs."""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from node.receive.pduguard import MAX_ASSOCIATE_RQ, GuardedSocket, PduTooLarge
from node.receive.pduguard import guard as _guard
from node.receive.scp import NodeRequestHandler

MAX_PDU = 16384
LOOPBACK = "127.0.0.1"


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def pdata(n: int, fill: bytes = b"\xab", command: bool = False, last: bool = True) -> bytes:
    """A P-DATA-TF of n bytes holding one PDV item (what a real peer sends)."""
    control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    return pdu(0x04, struct.pack(">LBB", n - 4, 1, control) + fill * (n - 6))


RQ = pdu(0x01, b"\x00" * 68)  # the first PDU of every connection


def past_rq(client: socket.socket, server: socket.socket) -> None:
    client.sendall(RQ)
    assert recv_exactly(server, len(RQ), 4096) == RQ


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, GuardedSocket]]:
    """(client, server side wrapped as the SCP wraps accepted sockets) over real loopback TCP."""
    with socket.create_server((LOOPBACK, 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    server = _guard(accepted, MAX_PDU, 10.0)
    assert isinstance(server, GuardedSocket)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def recv_exactly(sock: socket.socket, n: int, step: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(min(step, n - len(out)))
        assert chunk, "connection closed early"
        out += chunk
    return out


@pytest.mark.parametrize("step", [1, 5, 6, 7, 4096])
def test_valid_pdus_pass_through_unchanged_however_the_reads_split_them(
    pair: tuple[socket.socket, GuardedSocket], step: int
) -> None:
    client, server = pair
    stream = (
        pdu(0x01, bytes(range(256)) * 3)
        + pdata(MAX_PDU + 64)  # exactly the largest P-DATA-TF accepted
        + pdu(0x05, b"\x00" * 4)  # A-RELEASE-RQ
        + pdu(0x04, b"")  # zero-length PDU: framing must carry on at the next header
        + pdu(0x07, b"\x00\x00\x02\x00")
    )
    client.sendall(stream)
    assert recv_exactly(server, len(stream), step) == stream


@pytest.mark.parametrize("length", [MAX_PDU + 65, 1 << 31, 0xFFFFFFFF])
def test_a_p_data_pdu_declaring_more_than_max_pdu_raises_before_its_body_is_read(
    pair: tuple[socket.socket, GuardedSocket], length: int
) -> None:
    client, server = pair
    past_rq(client, server)
    client.sendall(header(0x04, length) + b"\x00" * 1000)
    with pytest.raises(PduTooLarge, match=f"declares {length} bytes"):
        server.recv(6)


def test_an_oversized_pdu_is_refused_as_an_os_error_so_pynetdicom_treats_it_as_a_closed_transport() -> None:
    assert issubclass(PduTooLarge, OSError)


def test_an_oversized_header_split_across_reads_is_still_refused(pair: tuple[socket.socket, GuardedSocket]) -> None:
    client, server = pair
    past_rq(client, server)
    client.sendall(header(0x04, 0xFFFFFFFF))
    assert server.recv(3) == b"\x04\x00\xff"
    with pytest.raises(PduTooLarge):
        recv_exactly(server, 3, 1)


def test_an_oversized_pdu_after_a_valid_one_in_the_same_read_is_refused(pair: tuple[socket.socket, GuardedSocket]) -> None:
    client, server = pair
    past_rq(client, server)
    client.sendall(pdata(100) + header(0x04, 0xFFFFFFFF))
    with pytest.raises(PduTooLarge):
        recv_exactly(server, 112, 4096)


def test_an_associate_request_may_be_larger_than_max_pdu_but_not_larger_than_max_associate_rq(
    pair: tuple[socket.socket, GuardedSocket],
) -> None:
    client, server = pair
    big_rq = pdu(0x01, b"\x00" * MAX_ASSOCIATE_RQ)
    sender = threading.Thread(target=client.sendall, args=(big_rq + header(0x01, MAX_ASSOCIATE_RQ + 1),))
    sender.start()
    try:
        assert len(recv_exactly(server, len(big_rq), 65536)) == len(big_rq)
        with pytest.raises(PduTooLarge, match="type 0x01"):
            server.recv(6)
    finally:
        sender.join()


def test_peeking_does_not_advance_the_framing(pair: tuple[socket.socket, GuardedSocket]) -> None:
    client, server = pair
    past_rq(client, server)
    client.sendall(pdata(10) + header(0x04, 0xFFFFFFFF))
    assert server.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL) == header(0x04, 10)
    assert server.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL) == header(0x04, 10)
    assert recv_exactly(server, 16, 4096) == pdata(10)
    with pytest.raises(PduTooLarge):
        server.recv(6)


def echo_command() -> bytes:
    """A C-ECHO-RQ command set (implicit VR little endian): CommandField 0x0030."""
    return struct.pack("<HHLH", 0x0000, 0x0100, 2, 0x0030)


def store_command() -> bytes:
    return struct.pack("<HHLH", 0x0000, 0x0100, 2, 0x0001)


def test_command_fragments_past_64_kib_are_refused_before_they_are_buffered(
    pair: tuple[socket.socket, GuardedSocket],
) -> None:
    client, server = pair
    past_rq(client, server)
    # Legal PDUs, each a command fragment that is never the last: pynetdicom would buffer them all.
    fragment = pdata(MAX_PDU, fill=b"\x00", command=True, last=False)
    sender = threading.Thread(target=client.sendall, args=(fragment * 8,), daemon=True)
    sender.start()
    with pytest.raises(PduTooLarge, match="command set longer than 65536"):
        recv_exactly(server, 8 * len(fragment), 65536)


def test_a_non_store_message_with_more_than_a_mib_of_dataset_is_refused(pair: tuple[socket.socket, GuardedSocket]) -> None:
    client, server = pair
    past_rq(client, server)
    command = pdu(0x04, struct.pack(">LBB", len(echo_command()) + 2, 1, 0x03) + echo_command())
    data = pdata(MAX_PDU, fill=b"\x00", last=False)
    stream = command + data * 80  # 80 x 16 KiB = 1.25 MiB of dataset fragments, no last one
    sender = threading.Thread(target=client.sendall, args=(stream,), daemon=True)
    sender.start()
    with pytest.raises(PduTooLarge, match="not a C-STORE"):
        recv_exactly(server, len(stream), 65536)


def test_a_c_store_dataset_of_any_size_passes_since_it_streams_to_disk(pair: tuple[socket.socket, GuardedSocket]) -> None:
    client, server = pair
    past_rq(client, server)
    command = pdu(0x04, struct.pack(">LBB", len(store_command()) + 2, 1, 0x03) + store_command())
    stream = command + pdata(MAX_PDU, fill=b"\x00", last=False) * 100 + pdata(MAX_PDU, fill=b"\x00")
    sender = threading.Thread(target=client.sendall, args=(stream,), daemon=True)
    sender.start()
    assert recv_exactly(server, len(stream), 65536) == stream
    sender.join()
    # The next message starts a new account: another C-ECHO passes.
    echo = pdu(0x04, struct.pack(">LBB", len(echo_command()) + 2, 1, 0x03) + echo_command())
    client.sendall(echo)
    assert recv_exactly(server, len(echo), 4096) == echo


def test_a_pdv_item_that_overruns_its_pdu_is_refused(pair: tuple[socket.socket, GuardedSocket]) -> None:
    client, server = pair
    past_rq(client, server)
    client.sendall(pdu(0x04, struct.pack(">LBB", 5000, 1, 0x02) + b"\x00" * 100))
    with pytest.raises(PduTooLarge, match="does not fit"):
        recv_exactly(server, 112, 4096)


def test_a_first_pdu_that_is_not_an_associate_request_is_refused_as_it_is_read(
    pair: tuple[socket.socket, GuardedSocket],
) -> None:
    client, server = pair
    client.sendall(pdata(100))
    with pytest.raises(PduTooLarge, match="first PDU is type 0x04"):
        server.recv(6)


# ----------------------------------------------------------------- the first-PDU screen


def screen(server: GuardedSocket, allowed: tuple[str, ...] = ()) -> str | None:
    """Run NodeRequestHandler._screen on an accepted socket without a server around it."""
    handler: Any = object.__new__(NodeRequestHandler)
    networks = tuple(ipaddress.ip_network(n) for n in allowed)
    handler.owner = SimpleNamespace(config=SimpleNamespace(security=SimpleNamespace(allowed_networks=networks)))
    handler.request = server
    verdict: str | None = handler._screen(LOOPBACK)
    return verdict


def test_a_plausible_associate_request_header_passes_the_screen_and_stays_unread(
    pair: tuple[socket.socket, GuardedSocket],
) -> None:
    client, server = pair
    rq = pdu(0x01, b"\x00\x01" + b"\x00" * 200)
    client.sendall(rq)
    assert screen(server) is None
    assert recv_exactly(server, len(rq), 4096) == rq


@pytest.mark.parametrize("split", [2, 6, 100])
def test_an_associate_request_arriving_in_pieces_is_waited_for(pair: tuple[socket.socket, GuardedSocket], split: int) -> None:
    client, server = pair
    rq = pdu(0x01, b"\x00" * 200)
    client.sendall(rq[:split])
    rest = threading.Timer(0.2, client.sendall, args=(rq[split:],))
    rest.start()
    try:
        assert screen(server) is None
    finally:
        rest.join()
    assert recv_exactly(server, len(rq), 4096) == rq


def test_an_associate_request_whose_body_never_completes_is_refused(pair: tuple[socket.socket, GuardedSocket]) -> None:
    """A plausible header then silence (slowloris): refused before pynetdicom would count it as an association."""
    client, server = pair
    client.sendall(header(0x01, 200) + b"\x00" * 50)
    server.settimeout(0.2)
    assert screen(server) == "A-ASSOCIATE-RQ of 200 bytes not complete within the ACSE timeout"


def test_an_associate_request_larger_than_default_socket_buffers_still_passes(
    pair: tuple[socket.socket, GuardedSocket],
) -> None:
    client, server = pair
    rq = pdu(0x01, bytes(MAX_ASSOCIATE_RQ))
    sender = threading.Thread(target=client.sendall, args=(rq,))
    sender.start()
    try:
        assert screen(server) is None
        assert recv_exactly(server, len(rq), 65536) == rq
    finally:
        sender.join()


@pytest.mark.parametrize(
    ("first_bytes", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "first PDU is type 0x47"),
        (header(0x04, 0xFFFFFFFF), "first PDU is type 0x04"),
        (header(0x01, 0xFFFFFFFF), "implausible length 4294967295"),
        (header(0x01, MAX_ASSOCIATE_RQ + 1), "implausible length"),
        (header(0x01, 10), "implausible length 10"),
        (b"\x16\x03\x01\x02\x00\x01", "first PDU is type 0x16"),  # a TLS ClientHello on the plain port
    ],
)
def test_the_screen_refuses_anything_that_is_not_a_plausible_associate_request(
    pair: tuple[socket.socket, GuardedSocket], first_bytes: bytes, reason: str
) -> None:
    client, server = pair
    client.sendall(first_bytes)
    verdict = screen(server)
    assert verdict is not None and reason in verdict


def test_a_connection_closed_before_six_bytes_is_refused(pair: tuple[socket.socket, GuardedSocket]) -> None:
    client, server = pair
    client.sendall(b"\x01\x00\x00")
    client.shutdown(socket.SHUT_WR)
    assert screen(server) == "connection closed before a PDU header"


def test_a_silent_connection_is_refused_when_the_acse_timeout_expires(pair: tuple[socket.socket, GuardedSocket]) -> None:
    _, server = pair
    server.settimeout(0.2)
    assert screen(server) == "no A-ASSOCIATE-RQ within the ACSE timeout"


def _screen_in_thread(server: GuardedSocket, allowed: tuple[str, ...]) -> tuple[threading.Thread, list[str | None]]:
    verdicts: list[str | None] = []
    thread = threading.Thread(target=lambda: verdicts.append(screen(server, allowed)), daemon=True)
    thread.start()
    return thread, verdicts


REJECT = b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x01"  # A-ASSOCIATE-RJ: permanent, service user, no reason


def test_a_peer_outside_the_allowed_hosts_gets_a_permanent_associate_reject(
    pair: tuple[socket.socket, GuardedSocket],
) -> None:
    client, server = pair
    client.sendall(pdu(0x01, b"\x00" * 100))
    thread, verdicts = _screen_in_thread(server, ("10.0.0.0/8",))
    client.settimeout(10)
    assert recv_exactly(client, 10, 10) == REJECT
    assert client.recv(1) == b""  # then the node half-closes and waits for us to close (ARTIM)
    client.close()
    thread.join(timeout=10)
    assert verdicts and verdicts[0] is not None and "not in security.allowed_hosts" in verdicts[0]


def test_a_disallowed_peer_whose_request_arrives_in_pieces_reads_a_reject_never_a_reset(
    pair: tuple[socket.socket, GuardedSocket],
) -> None:
    client, server = pair
    whole = pdu(0x01, b"\x00" * 100)
    client.sendall(whole[:16])
    thread, _ = _screen_in_thread(server, ("10.0.0.0/8",))
    # The reject must wait for the whole request: answered early, the rest of it would arrive at a closed
    # socket and the kernel would reset the connection, which the requestor sees as an abort.
    readable, _, _ = select.select([client], [], [], 0.5)
    assert not readable
    client.sendall(whole[16:])
    client.settimeout(10)
    assert recv_exactly(client, 10, 10) == REJECT
    assert client.recv(1) == b""
    client.close()
    thread.join(timeout=10)


def test_a_peer_inside_the_allowed_hosts_passes(pair: tuple[socket.socket, GuardedSocket]) -> None:
    client, server = pair
    client.sendall(pdu(0x01, b"\x00" * 100))
    assert screen(server, allowed=("10.0.0.0/8", "127.0.0.0/8")) is None
