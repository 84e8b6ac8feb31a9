"""Event-driven waits for pynetdicom's polling reactors on the node's acceptor associations.

pynetdicom's association and DUL threads poll with `time.sleep(0.001)` between checks, so every hop of a
C-STORE (PDU read -> DIMSE message -> handler -> response -> socket) waits out at least one tick, several
milliseconds per instance on a busy machine. We keep pynetdicom's loops and their timing semantics, but
let a sleeping thread wake as soon as the thing it polls for is there:

* the DUL thread waits in select() on its socket (woken by incoming data) instead of sleeping blindly;
* the association thread waits on its DIMSE message queue's condition (woken by a decoded message).

Both wait at most the delay pynetdicom asked for, so idle CPU use is unchanged. Threads that did not opt
in (the node's own SCU associations, anything else) get the real `time.sleep`.
"""

from __future__ import annotations

import select
import threading
import time as _time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from pynetdicom import association as _association
from pynetdicom import dul as _dul

_real_sleep = _time.sleep


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
    """Route pynetdicom's reactor sleeps through the proxy (idempotent)."""
    global _installed
    if _installed:
        return
    proxy = _TimeProxy()
    _association.time = proxy
    _dul.time = proxy
    _installed = True


def accelerate(assoc: Any) -> None:
    """Give an acceptor association (and its DUL thread) event-driven waits. Call before assoc.start()."""
    msg_queue = assoc.dimse.msg_queue
    dul = assoc.dul

    def assoc_wait(seconds: float) -> None:
        with msg_queue.not_empty:
            if not msg_queue._qsize():
                msg_queue.not_empty.wait(seconds)

    def dul_wait(seconds: float) -> None:
        sock = getattr(getattr(dul, "socket", None), "socket", None)
        if sock is None:
            _real_sleep(seconds)
            return
        try:
            select.select([sock], [], [], seconds)
        except (OSError, ValueError):
            _real_sleep(seconds)

    assoc._node_wait = assoc_wait
    dul._node_wait = dul_wait
