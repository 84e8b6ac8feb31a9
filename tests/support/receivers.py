"""A node's receiver processes (node.receiver_processes > 1), found the way an operator would: in its log."""

from __future__ import annotations

import re

import psutil

from tests.support.waiting import wait_for
from toolkit.nodeproc import NodeProcess

_READY = re.compile(r"Receiver process \d+ ready \(pid (\d+)\)")


def receivers(node: NodeProcess) -> list[psutil.Process]:
    """The node's live receiver processes, as its log names them ("Receiver process N ready (pid P)")."""
    assert node.proc is not None
    pids = {int(m) for m in _READY.findall(node.log())}
    out = []
    for child in psutil.Process(node.proc.pid).children():
        try:
            if child.pid in pids and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.Error:
            continue
    return out


def all_receivers(node: NodeProcess, count: int) -> list[psutil.Process]:
    """Wait until `count` receivers have said they are ready (their lines reach the log through the node)."""
    return wait_for(lambda: found if len(found := receivers(node)) == count else None, timeout=60,
                    what=f"{count} receivers ready")
