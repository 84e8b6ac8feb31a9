"""Every process-wide setting and every use of a library's private parts, in one place, each with its reason.

Nothing here runs at import time: StorageSCP.start() calls prepare_pynetdicom(), node.app.run() calls
tune_interpreter(). Upgrading pynetdicom means re-checking this file (and fastpath.py, which it installs).
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import logging
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pynetdicom import _config, dimse_messages

from node.receive import fastpath

log = logging.getLogger(__name__)


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
    # pynetdicom writes a chunked dataset in its network thread; a write that fails there (ENOSPC, EIO) kills
    # the association and the sender gets no status. Our chunk file records the error instead, drops the rest
    # of the dataset (still reading it off the wire), and the C-STORE handler answers 0xA700.
    dimse_messages.NamedTemporaryFile = _chunk_file  # type: ignore[assignment]


class ChunkFile:
    """pynetdicom's chunk file (NamedTemporaryFile) that remembers a failed write instead of raising it."""

    def __init__(self, inner: IO[bytes], name: str) -> None:
        self._inner = inner
        self.name = name
        self.file = self  # pynetdicom calls .file.flush()
        self.error: OSError | None = None
        self._written = 0
        self._next_space_check = _limits.space_check_bytes

    def write(self, data: bytes) -> int:
        if self.error is None:
            self._written += len(data)
            limit = _limits.max_bytes
            if limit is not None and self._written > limit:
                self._fail(OSError(errno.EFBIG, f"dataset larger than node.max_instance_mb ({limit >> 20} MiB)"))
                return len(data)
            if self._written >= self._next_space_check:
                # A large dataset must not fill the disk past the guard while it streams in.
                self._next_space_check = self._written + _limits.space_check_bytes
                if _limits.space_ok is not None and not _limits.space_ok():
                    self._fail(OSError(errno.ENOSPC, "the disk went above the disk guard's high-water mark while "
                                                     "the dataset streamed in"))
                    return len(data)
            try:
                return self._inner.write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._inner.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        try:
            self._inner.close()
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        with _failed_lock:
            _failed[self.name] = exc
        log.error("Receiving a dataset into %s failed: %s; the C-STORE will be answered 0xA700", self.name, exc)
        try:
            Path(self.name).unlink(missing_ok=True)  # give the space back at once
        except OSError:
            log.debug("could not remove %s", self.name)


_failed: dict[str, OSError] = {}
_failed_lock = threading.Lock()


@dataclass
class StreamLimits:
    """What one received dataset may write (set by the SCP from its config; process-wide like the chunk file)."""

    max_bytes: int | None = None
    space_ok: Callable[[], bool] | None = None
    space_check_bytes: int = 32 << 20  # the disk guard is asked again after every 32 MiB of one dataset


_limits = StreamLimits()


def set_stream_limits(max_bytes: int | None, space_ok: Callable[[], bool] | None) -> None:
    _limits.max_bytes, _limits.space_ok = max_bytes, space_ok


def _chunk_file(*args: Any, **kwargs: Any) -> ChunkFile:
    inner = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 - closed by pynetdicom via ChunkFile.close
    return ChunkFile(inner, inner.name)


def chunk_write_error(path: Path | str) -> OSError | None:
    """The write error of a received dataset's chunk file (removed from the record), or None."""
    with _failed_lock:
        return _failed.pop(str(path), None)


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
