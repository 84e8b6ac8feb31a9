"""Notifier against a fake systemd notify socket (filesystem and abstract datagram sockets)."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.ops.notify import Notifier


@pytest.fixture
def fs_socket() -> Iterator[tuple[str, socket.socket]]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path with long test names can exceed that.
    with tempfile.TemporaryDirectory(prefix="nfy") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        try:
            yield path, sock
        finally:
            sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"dicomnode-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        yield "@" + name, sock
    finally:
        sock.close()


def fields(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode("utf-8").split("\n")


def test_without_notify_socket_every_call_is_a_silent_no_op(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    with caplog.at_level(logging.DEBUG, logger="node.ops.notify"):
        notifier.ready("up")
        notifier.reloading()
        notifier.status("x")
        notifier.watchdog()
        notifier.stopping()
    assert caplog.records == []
    assert notifier.watchdog_interval() is None


def test_ready_with_a_status_reaches_a_filesystem_socket(fs_socket: tuple[str, socket.socket]) -> None:
    path, sock = fs_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    notifier.ready("listening on 127.0.0.1:11112")
    assert fields(sock) == ["READY=1", "STATUS=listening on 127.0.0.1:11112"]
    notifier.close()


def test_ready_without_status_sends_ready_alone(fs_socket: tuple[str, socket.socket]) -> None:
    path, sock = fs_socket
    Notifier.from_env({"NOTIFY_SOCKET": path}).ready()
    assert fields(sock) == ["READY=1"]


def test_abstract_socket_names_starting_with_at_are_supported(abstract_socket: tuple[str, socket.socket]) -> None:
    address, sock = abstract_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    notifier.stopping()
    assert fields(sock) == ["STOPPING=1"]
    notifier.watchdog()
    assert fields(sock) == ["WATCHDOG=1"]


def test_reloading_carries_the_monotonic_clock_in_microseconds(abstract_socket: tuple[str, socket.socket]) -> None:
    address, sock = abstract_socket
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier.from_env({"NOTIFY_SOCKET": address}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, monotonic = fields(sock)
    assert reloading == "RELOADING=1"
    key, value = monotonic.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_text_is_flattened_to_one_line_so_it_cannot_inject_fields(
    abstract_socket: tuple[str, socket.socket],
) -> None:
    address, sock = abstract_socket
    Notifier.from_env({"NOTIFY_SOCKET": address}).status("draining\nREADY=1  3 associations")
    assert fields(sock) == ["STATUS=draining READY=1 3 associations"]


def test_watchdog_interval_comes_from_watchdog_usec_in_seconds() -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": "60000000"}).watchdog_interval() == 60.0
    own = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(own).watchdog_interval() == 30.0


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    other = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_interval() is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_an_absent_zero_or_malformed_watchdog_usec_means_no_watchdog(usec: str) -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": usec}).watchdog_interval() is None


def test_a_non_unix_notify_address_disables_notifications_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="node.ops.notify"):
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "notifications disabled" in caplog.text


def test_send_failures_never_raise_and_warn_only_once(caplog: pytest.LogCaptureFixture) -> None:
    with tempfile.TemporaryDirectory(prefix="nfy") as tmp:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": str(Path(tmp) / "nobody-listens")})
        with caplog.at_level(logging.DEBUG, logger="node.ops.notify"):
            notifier.ready()
            notifier.watchdog()
            notifier.stopping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "READY=1" in warnings[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 2


def test_a_socket_that_appears_later_receives_the_next_message() -> None:
    name = f"dicomnode-test-{uuid.uuid4().hex}"
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
    notifier.watchdog()  # nobody listens yet: logged, not raised
    late = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    late.bind(b"\0" + name.encode())
    late.settimeout(5)
    try:
        notifier.ready()
        assert fields(late) == ["READY=1"]
    finally:
        late.close()
