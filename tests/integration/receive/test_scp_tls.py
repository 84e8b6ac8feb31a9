"""DICOM over TLS: DCMTK echoscu with certificates, and a silent TLS client never stalls other connections."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from toolkit.peers import dcmtk, peer_env

LOOPBACK = "127.0.0.1"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "node.key", tmp_path / "node.pem"
    subprocess.run(
        ["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return key, cert


def tls_echo(port: int, key: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aec", "DICOMNODE", "+tls", str(key), str(cert), "+cf", str(cert), "-to", "10", "-ta", "10",
         LOOPBACK, str(port)],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_echoscu_over_tls_succeeds_and_plain_tcp_is_refused(start_node, certificate):
    key, cert = certificate
    node = start_node(node={"tls": {"enabled": True, "certificate": str(cert), "private_key": str(key)}})
    port = node.config.node.port
    proc = tls_echo(port, key, cert)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plain = subprocess.run(
        [dcmtk("echoscu"), "-aec", "DICOMNODE", "-to", "5", "-ta", "5", LOOPBACK, str(port)],
        env=peer_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert plain.returncode != 0


def test_a_silent_client_on_the_tls_port_does_not_stall_other_connections(start_node, certificate):
    key, cert = certificate
    node = start_node(node={"tls": {"enabled": True, "certificate": str(cert), "private_key": str(key)},
                            "acse_timeout_s": 60})
    port = node.config.node.port
    silent = [socket.create_connection((LOOPBACK, port)) for _ in range(5)]
    try:
        # The handshakes of the silent clients wait in their own threads (up to 60 s): this one goes through now.
        proc = tls_echo(port, key, cert)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        for s in silent:
            s.close()


def tls_client(port: int) -> socket.socket:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(socket.create_connection((LOOPBACK, port), timeout=10), server_hostname="localhost")


def associate_rq(called: str = "DICOMNODE", calling: str = "HOSTILE") -> bytes:
    """A minimal valid A-ASSOCIATE-RQ: application context, one Verification context, user info (max PDU)."""
    import struct

    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    app = item(0x10, b"1.2.840.10008.3.1.1.1")
    pc = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">L", 16384)))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
            + app + pc + user)
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def closed_by_peer(sock: socket.socket, payload: bytes, repeat: int) -> bool:
    """Send payload repeat times; True when the node closes the connection before all of it is accepted."""
    try:
        for _ in range(repeat):
            sock.sendall(payload)
        sock.settimeout(10)
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except OSError:
        return True


@pytest.mark.parametrize("receivers", [1, 2])
def test_storescu_over_tls_stores_a_study(start_node, certificate, tmp_path, receivers):
    from toolkit.dicomgen import SeriesSpec, StudySpec, write_study

    key, cert = certificate
    node = start_node(node={"tls": {"enabled": True, "certificate": str(cert), "private_key": str(key)},
                            "receiver_processes": receivers})
    study = StudySpec(series=[SeriesSpec(n_slices=5)])
    files = write_study(study, tmp_path / "src")
    proc = subprocess.run(
        [dcmtk("storescu"), "-aec", "DICOMNODE", "+tls", str(key), str(cert), "+cf", str(cert), "-to", "10", "-ta", "10",
         LOOPBACK, str(node.config.node.port), *map(str, files)],
        env=peer_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert node.store.instance_count(study.study_uid) == 5


def test_a_tls_peer_flooding_command_fragments_is_cut_off_before_the_node_buffers_them(start_node, certificate):
    import struct

    key, cert = certificate
    node = start_node(node={"tls": {"enabled": True, "certificate": str(cert), "private_key": str(key)}})
    sock = tls_client(node.config.node.port)
    try:
        sock.sendall(associate_rq())
        accepted = sock.recv(6)
        assert accepted[:1] == b"\x02", accepted  # A-ASSOCIATE-AC: a real association
        body = struct.pack(">LBB", 16000 - 4, 1, 0x01) + bytes(16000 - 6)  # a command fragment, never the last
        fragment = struct.pack(">BBL", 0x04, 0, len(body)) + body
        # 64 MiB offered; the node must drop the association after 64 KiB of command set.
        assert closed_by_peer(sock, fragment, 4200)
    finally:
        sock.close()


def test_a_tls_peer_whose_first_pdu_is_not_an_associate_request_is_refused(start_node, certificate):
    key, cert = certificate
    node = start_node(node={"tls": {"enabled": True, "certificate": str(cert), "private_key": str(key)}})
    sock = tls_client(node.config.node.port)
    try:
        assert closed_by_peer(sock, b"\x04\x00\xff\xff\xff\xff" + bytes(1000), 1)
    finally:
        sock.close()
    assert 'dicomnode_rejects_total{reason="not_associate_rq"} 1.0\n' in node.metrics.render()
