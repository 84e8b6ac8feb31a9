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
