"""Files over HTTP: a study's outputs as a zip streamed while it is built, and uploads streamed into inbox/import/."""

from __future__ import annotations

import io
import os
import re
import secrets
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node.store.store import fsync_dir

CHUNK = 1 << 20
_UPLOAD_NAME = re.compile(r"^web-[A-Za-z0-9._-]{1,100}\.zip$")


class _Sink(io.RawIOBase):
    """A write-only, unseekable buffer: zipfile then writes data descriptors and never seeks back."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self._parts.append(chunk)
        self.size += len(chunk)
        return len(chunk)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        self.size = 0
        return out


def folder_files(folder: Path) -> list[Path]:
    """Regular files under folder, sorted; symbolic links are never followed (nothing outside the folder leaks)."""
    out = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not Path(root, d).is_symlink())
        for name in sorted(files):
            path = Path(root, name)
            if path.is_file() and not path.is_symlink():
                out.append(path)
    return out


def zip_stream(folder: Path, files: list[Path] | None = None, prefix: str | None = None) -> Iterator[bytes]:
    """The files as a zip, yielded in pieces of about 1 MiB: memory stays flat whatever the study's size.

    Stored, not deflated: NIfTI outputs are already gzip-compressed and the workbook is a zip itself."""
    sink = _Sink()
    root = prefix if prefix is not None else folder.name
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in files if files is not None else folder_files(folder):
            arcname = f"{root}/{path.relative_to(folder).as_posix()}" if root else path.relative_to(folder).as_posix()
            info = zipfile.ZipInfo(arcname, time.localtime(path.stat().st_mtime)[:6])
            info.compress_type = zipfile.ZIP_STORED
            with path.open("rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    if sink.size >= CHUNK:
                        yield sink.take()
            if sink.size:
                yield sink.take()
    tail = sink.take()
    if tail:
        yield tail


class UploadTooLarge(Exception):
    pass


class NotAZip(Exception):
    pass


@dataclass
class Upload:
    """One upload being written under a hidden name in inbox/import/ (the importer skips dot-names)."""

    folder: Path
    name: str
    limit: int
    received: int = 0
    _fh: io.BufferedWriter | None = None

    @classmethod
    def begin(cls, import_dir: Path, user: str, limit: int) -> Upload:
        import_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"web-{user}-{stamp}-{secrets.token_hex(3)}.zip"
        upload = cls(import_dir, name, limit)
        upload._fh = open(upload.partial, "xb")  # noqa: SIM115 - closed in finish()/abort()
        return upload

    @property
    def _file(self) -> io.BufferedWriter:
        assert self._fh is not None, "Upload.begin() opens the file"
        return self._fh

    @property
    def partial(self) -> Path:
        return self.folder / f".{self.name}.part"

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limit:
            raise UploadTooLarge(self.received)
        self._file.write(chunk)

    def finish(self) -> Path:
        """Durable, checked, then renamed in: the importer sees the whole zip or nothing."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if not zipfile.is_zipfile(self.partial):
            self.partial.unlink(missing_ok=True)
            raise NotAZip()
        final = self.folder / self.name
        os.replace(self.partial, final)
        fsync_dir(self.folder)
        return final

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            self.partial.unlink(missing_ok=True)


def upload_state(import_dir: Path, name: str) -> dict[str, str] | None:
    """What the importer made of an upload: waiting, or its report from done/ or failed/ (None: unknown name)."""
    if not _UPLOAD_NAME.match(name):
        return None
    for folder, state in (("done", "imported"), ("failed", "failed")):
        report = import_dir / folder / f"{name}.report.txt"
        if report.is_file():
            return {"name": name, "state": state, "report": report.read_text(encoding="utf-8", errors="replace")[:100_000]}
    if (import_dir / name).exists():
        return {"name": name, "state": "waiting", "report": ""}
    return None
