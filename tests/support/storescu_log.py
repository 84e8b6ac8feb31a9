"""Reading DCMTK storescu -v output: which files were acknowledged, and a stored file's dataset bytes."""

from __future__ import annotations

import re
from pathlib import Path

from node.store.store import dataset_offset

_SENDING = re.compile(r"I: Sending file: (?P<path>\S+)")
_RESPONSE = re.compile(r"I: Received Store Response \((?P<status>[^)]*)\)")


def dataset_bytes(path: Path) -> bytes:
    return path.read_bytes()[dataset_offset(path) :]


def acknowledged(log: str) -> tuple[list[str], list[str]]:
    """(files storescu -v saw answered with Success, files it started sending), in order.

    storescu logs "I: Sending file: PATH" before each C-STORE and "I: Received Store Response (STATUS)" after
    it; a file with no response line was cut off by the crash.
    """
    acked: list[str] = []
    started: list[str] = []
    current: str | None = None
    for line in log.splitlines():
        if m := _SENDING.search(line):
            current = m["path"]
            started.append(current)
        elif (m := _RESPONSE.search(line)) is not None:
            assert current is not None, f"a response without a file in:\n{log}"
            if m["status"] == "Success":
                acked.append(current)
            current = None
    return acked, started
