"""Every process-wide setting and every use of a library's private parts, in one place, each with its reason.

Nothing here runs at import time: StorageSCP.start() calls prepare_pynetdicom(), node.app.run() calls
tune_interpreter(). Upgrading pynetdicom means re-checking this file (and fastpath.py, which it installs).
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import tempfile
from pathlib import Path
from typing import Any

from pynetdicom import _config

from node.receive import fastpath


def prepare_pynetdicom(tmp_dir: Path) -> None:
    """Settings the receiver needs; idempotent. They are process-wide, so they also hold for C-GET (the SCU)."""
    # Stream each received dataset to a temp file instead of memory, whatever its size; the C-STORE handler
    # moves that file into the store, and the SCU's C-GET handler reads it the same way.
    _config.STORE_RECV_CHUNKED_DATASET = True
    # The node logs its own events; pynetdicom's per-message logging would flood the journal.
    _config.LOG_HANDLER_LEVEL = "none"
    # pynetdicom writes those chunked datasets with NamedTemporaryFile(): keep them on the store's filesystem,
    # so the durable move into place is a rename, not a copy.
    tempfile.tempdir = str(tmp_dir)
    # pynetdicom's reactors poll with time.sleep(0.001): fastpath lets acceptor threads wake on data instead.
    fastpath.install()


def tune_interpreter() -> None:
    """Network threads wait on sockets; a shorter GIL switch interval lets them answer a peer (and its Nagle
    algorithm) within a millisecond instead of 5 ms while a worker thread computes."""
    sys.setswitchinterval(0.001)


def register_server(ae: Any, server: Any) -> None:
    """AE.make_server() does not list the server in AE._servers (only start_server() does); AE.shutdown()
    and active_associations read that list, so our own accept loop must be in it."""
    ae._servers.append(server)


def unregister_server(ae: Any, server: Any) -> None:
    if server in ae._servers:
        ae._servers.remove(server)


def terminate_workers(pool: cf.ProcessPoolExecutor) -> None:
    """ProcessPoolExecutor has no public way to stop a running task: terminate its worker processes."""
    for proc in list(getattr(pool, "_processes", {}).values()):
        proc.terminate()
