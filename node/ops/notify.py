"""systemd service notifications (READY, RELOADING, STOPPING, WATCHDOG, STATUS) over the notify socket."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify(3) datagrams to $NOTIFY_SOCKET; a no-op when the node is not run by systemd.

    Sending never raises: a lost notification must not take the node down, and systemd's own timeouts
    (TimeoutStartSec, WatchdogSec) are the safety net. The first failure is logged as a warning, later
    ones at debug level, so a broken socket does not flood the journal at every watchdog ping.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed_once = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Build from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID as systemd sets them."""
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            # vsock: and other transports of newer systemd are not needed on a host service.
            log.warning("NOTIFY_SOCKET %r is not a unix socket path: notifications disabled", address)
            address = None
        return cls(address, _watchdog_usec(environ))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str = "") -> None:
        """Startup (or a reload) is finished: systemd moves the unit to active and runs dependants."""
        self._send(["READY=1", *_status_field(status)])

    def reloading(self) -> None:
        """A configuration reload starts; call ready() when it is done, whatever its outcome."""
        # MONOTONIC_USEC lets systemd >= 253 match this message to the reload it asked for; older ones ignore it.
        self._send(["RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"])

    def stopping(self) -> None:
        """Shutdown has started (draining), so systemd does not treat the wait as a hang."""
        self._send(["STOPPING=1"])

    def watchdog(self) -> None:
        """Keep-alive ping; call it from the loop whose liveness it vouches for, every watchdog_interval()/2."""
        self._send(["WATCHDOG=1"])

    def status(self, text: str) -> None:
        """Free-form one-line status shown by `systemctl status`."""
        self._send(list(_status_field(text)))

    def watchdog_interval(self) -> float | None:
        """The WatchdogSec= systemd expects pings within, in seconds; None when the watchdog is off."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 1_000_000

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, fields: list[str]) -> None:
        if self._address is None or not fields:
            return
        payload = "\n".join(fields).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                level = logging.DEBUG if self._failed_once else logging.WARNING
                self._failed_once = True
                log.log(level, "cannot notify systemd (%s): %s", fields[0], exc)
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None


def _socket_address(address: str) -> str | bytes:
    # "@name" is a Linux abstract socket: the leading NUL byte is the real first character of its name.
    if address.startswith("@"):
        return b"\0" + address[1:].encode("utf-8")
    return address


def _status_field(text: str) -> tuple[str, ...]:
    # A newline would start a new KEY=VALUE assignment, so a status is kept to one line.
    line = " ".join(text.split())
    return (f"STATUS={line}",) if line else ()


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    raw_pid = environ.get("WATCHDOG_PID")
    if raw_pid:
        # The variables are inherited by children; only the process systemd watches should ping.
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_PID %r", raw_pid)
            return None
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC %r", raw)
        return None
    return usec if usec > 0 else None
