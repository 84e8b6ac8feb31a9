"""Watch-folder import: DICOM files, folders and .zip archives dropped into inbox/import/ are ingested like C-STOREs.

Longer than our ~450-line norm on purpose: files, folders and zip members take one path into the store
with one report and one set of bounds (zip bombs, sizes); the bounds belong next to the reads they bound.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
import shutil
import stat
import struct
import threading
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from watchdog.events import FileSystemEvent, FileSystemEventHandler

from node.background import Loop, start_observer, stop_observer
from node.config import ImportConfig
from node.dicom import reader
from node.dicom.validators import uid_problem
from node.store.store import STATUS_OUT_OF_RESOURCES, STATUS_STORE_FAILED, Origin, Store, StoreError, fsync_dir

log = logging.getLogger(__name__)

IMPORT_DIR = "import"
DONE_DIR = "done"
FAILED_DIR = "failed"
CALLING_AE = "IMPORT"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the SOP class of a DICOMDIR
# Names that say "still being uploaded" (browsers, WinSCP, rsync's dot-names are skipped anyway).
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart", ".download")
REPORT_SUFFIX = ".report.txt"
_CHUNK = 1 << 20
_HEAD = 132
_META_MAX = 1 << 16
_MEDIA_STORAGE_SOP_CLASS = 0x00020002
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_DRIVE = re.compile(r"^[A-Za-z]:")


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # identical content already in the store
    CONFLICT = "conflict"  # same SOP Instance UID, other content: kept in var/conflicts
    QUARANTINED = "quarantined"  # refused by the store as bad DICOM, kept in var/quarantine
    REFUSED = "refused"  # refused by the importer (unsafe zip member, caps, I/O)
    SKIPPED = "skipped"  # not DICOM, or not followed (symlinks)


FAILING = frozenset({Outcome.QUARANTINED, Outcome.REFUSED})


@dataclass(frozen=True)
class MemberResult:
    name: str
    outcome: Outcome
    detail: str = ""


@dataclass
class BatchReport:
    """What happened to every member of one dropped item."""

    item: str
    batch_id: str
    kind: str = "file"
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    results: list[MemberResult] = field(default_factory=list)
    destination: Path | None = None

    def add(self, name: str, outcome: Outcome, detail: str = "") -> None:
        self.results.append(MemberResult(name, outcome, detail))

    @property
    def failed(self) -> list[MemberResult]:
        return [r for r in self.results if r.outcome in FAILING]

    def counts(self) -> Counter[str]:
        return Counter(r.outcome.value for r in self.results)

    def text(self) -> str:
        counts = self.counts()
        verdict = f"failed: {len(self.failed)} member(s) refused" if self.failed else "done"
        lines = [
            "dicom-node import report",
            f"item: {_printable(self.item)} ({self.kind})",
            f"batch: import-{self.batch_id}",
            f"started: {self.started}",
            f"finished: {datetime.now(UTC).isoformat(timespec='seconds')}",
            f"result: {verdict}",
            "counts: " + " ".join(f"{o.value}={counts.get(o.value, 0)}" for o in Outcome),
        ]
        # Stored members are only counted (a study has thousands); everything else is listed, one per line.
        for outcome in (Outcome.REFUSED, Outcome.QUARANTINED, Outcome.CONFLICT, Outcome.SKIPPED):
            listed = [r for r in self.results if r.outcome == outcome]
            if listed:
                lines.append("")
                lines.append(f"{outcome.value}:")
                lines += [f"  {_printable(r.name)}\t{_printable(r.detail)}" for r in listed]
        return "\n".join(lines) + "\n"


class _Stopped(Exception):
    """The node is stopping: leave the item where it is; the next start imports it again (idempotently)."""


class _DiskFull(_Stopped):
    """The disk guard tripped mid-batch: stop as for a node stop; the item is imported again later."""


class _Exceeded(Exception):
    pass


def _printable(text: str) -> str:
    """Names from archives may hold control characters: escape them so a report line stays one line."""
    return "".join(c if c.isprintable() and c != "\t" else f"\\x{ord(c):02x}" for c in text)


def sniff(head: bytes) -> str | None:
    """'part10' (preamble + DICM), 'raw' (a dataset without file meta), or None when it does not look like DICOM."""
    if len(head) >= _HEAD and head[128:132] == b"DICM":
        return "part10"
    if len(head) < 8:
        return None
    group_le, group_be = struct.unpack("<H", head[:2])[0], struct.unpack(">H", head[:2])[0]
    # Raw datasets start with group 0002 (meta without preamble) or 0008 (SpecificCharacterSet, ImageType...).
    if group_le in (0x0002, 0x0008) or group_be == 0x0008:
        vr = head[4:6]
        explicit = vr.isalpha() and vr.isupper()
        implicit_len = struct.unpack("<I", head[4:8])[0]
        if explicit or implicit_len < (1 << 16):
            return "raw"
    return None


def member_problem(info: zipfile.ZipInfo, cfg: ImportConfig) -> str | None:
    """Why a zip member must not be read (by its central directory entry), or None."""
    name = info.filename
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "unsafe member name: absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "unsafe member name: path traversal ('..')"
    if "\x00" in name:
        return "unsafe member name: NUL byte"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link member: not followed"
    if info.flag_bits & 0x1:
        return "encrypted member: cannot be read"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"compression method {info.compress_type} not supported (only stored and deflate)"
    if info.file_size > cfg.max_file_bytes:
        return f"declares {info.file_size} bytes uncompressed, above import.max_file_bytes {cfg.max_file_bytes}"
    if info.file_size > cfg.zip_ratio_floor_bytes and info.file_size > cfg.zip_max_ratio * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        return f"compression ratio {ratio:.0f}:1 above import.zip_max_ratio {cfg.zip_max_ratio:g} (zip bomb?)"
    return None


def declared_member_count(path: Path) -> int | None:
    """Entry count from the zip's end-of-central-directory record, read before the directory itself is parsed."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        tail_len = min(size, 65536 + 22)
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
        pos = tail.rfind(b"PK\x05\x06")
        if pos < 0 or pos + 22 > len(tail):
            return None
        count = int(struct.unpack("<H", tail[pos + 10 : pos + 12])[0])
        if count != 0xFFFF or pos < 20 or tail[pos - 20 : pos - 16] != b"PK\x06\x07":
            return count
        # Zip64: the locator points at the zip64 end record holding the 64-bit count.
        (offset,) = struct.unpack("<Q", tail[pos - 12 : pos - 4])
        fh.seek(offset)
        record = fh.read(56)
        if len(record) < 56 or record[:4] != b"PK\x06\x06":
            return None
        return int(struct.unpack("<Q", record[32:40])[0])


_SPARSE_MIN_BYTES = 64 << 20  # smaller files are not worth the question


def bounded_copy(src: IO[bytes], dst: IO[bytes], limit: int) -> int:
    """Copy at most `limit` bytes; raise _Exceeded as soon as the source yields more (whatever its header said)."""
    written = 0
    while True:
        chunk = src.read(min(_CHUNK, limit + 1 - written))
        if not chunk:
            return written
        written += len(chunk)
        if written > limit:
            raise _Exceeded(written)
        dst.write(chunk)


def _read_head(src: IO[bytes]) -> bytes:
    head = b""
    while len(head) < _HEAD:
        chunk = src.read(_HEAD - len(head))
        if not chunk:
            break
        head += chunk
    return head


class _Handler(FileSystemEventHandler):
    def __init__(self, importer: Importer) -> None:
        self.importer = importer

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type == "moved":
            self.importer.renamed_in(Path(str(getattr(event, "dest_path", ""))))
        self.importer.poke()


class Importer:
    """Watches <inbox>/import/, imports each settled item as one batch and files it under done/ or failed/."""

    def __init__(
        self, store: Store, inbox: Path, config: ImportConfig, disk_ok: Callable[[], bool] | None = None
    ) -> None:
        self.store = store
        self.config = config
        self.folder = inbox / IMPORT_DIR
        self.done = self.folder / DONE_DIR
        self.failed = self.folder / FAILED_DIR
        self.disk_ok = disk_ok or (lambda: True)
        self._pending: dict[str, tuple[tuple[int, ...], float]] = {}
        self._renamed: set[str] = set()
        # Items imported but that could not be moved away (permissions): not imported again until they change.
        self._stuck: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()
        self._loop = Loop("importer", self._pass, lambda: self.config.rescan_interval_s, log)
        self.health = self._loop.health  # a long pass is a big archive, not a stall: checked with no limit
        self._observer: Any = None
        self._disk_logged = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for folder in (self.folder, self.done, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        self._observer = start_observer(self.folder, _Handler(self))
        self._loop.start()
        log.info("Watching %s for DICOM files, folders and zip archives to import", self.folder)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop between two members; an interrupted item stays in place and is imported again at the next start."""
        self._loop.stopping.set()  # an import in progress stops between two members
        stop_observer(self._observer)
        self._observer = None
        self._loop.stop(timeout)

    def poke(self) -> None:
        self._loop.wake()

    def renamed_in(self, path: Path) -> None:
        """An item renamed into the folder is complete: import it without waiting for it to settle."""
        if path.parent == self.folder:
            with self._lock:
                self._renamed.add(path.name)

    def _pass(self) -> float:
        """One scan; soon again while items are settling, else at the rescan interval."""
        self.scan_once()
        with self._lock:
            waiting = bool(self._pending)
        return max(0.2, min(1.0, self.config.settle_s / 2)) if waiting else self.config.rescan_interval_s

    # ------------------------------------------------------------ scanning

    def scan_once(self, now: float | None = None) -> list[BatchReport]:
        """Import every item that is complete (renamed in, or unchanged for settle_s); return their reports."""
        if not self.folder.is_dir():
            return []
        reports = []
        entries = sorted(self.folder.iterdir())
        with self._lock:
            present = {p.name for p in entries}
            for name in set(self._pending) - present:
                del self._pending[name]  # removed by the user before it settled
            for name in set(self._stuck) - present:
                del self._stuck[name]
        for path in entries:
            if self._loop.stopping.is_set():
                break
            if not self._ready(path, time.monotonic() if now is None else now):
                continue
            if not self.disk_ok():
                if not self._disk_logged:
                    log.warning("Import paused: the disk guard is tripped; %s waits", path.name)
                    self._disk_logged = True
                break
            self._disk_logged = False
            report = self.import_item(path)
            if report is not None:
                reports.append(report)
        return reports

    def _ready(self, path: Path, now: float) -> bool:
        name = path.name
        if name in (DONE_DIR, FAILED_DIR) or name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES):
            return False
        with self._lock:
            if name in self._renamed:
                self._renamed.discard(name)
                self._pending.pop(name, None)
                return True
            try:
                signature = _signature(path)
            except OSError:
                self._pending.pop(name, None)
                return False  # vanished while we looked
            if self._stuck.get(name) == signature:
                return False
            previous = self._pending.get(name)
            if previous is None or previous[0] != signature:
                self._pending[name] = (signature, now)
                return self.config.settle_s <= 0
            if now - previous[1] >= self.config.settle_s:
                del self._pending[name]
                return True
            return False

    # ------------------------------------------------------------ one batch

    def import_item(self, path: Path) -> BatchReport | None:
        """Import one dropped item as a batch, file it under done/ or failed/ with its report; None if interrupted."""
        batch = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        origin = Origin(calling_ae=CALLING_AE, peer_ip="", assoc_id=f"import-{batch}")
        report = BatchReport(item=path.name, batch_id=batch)
        started = time.monotonic()
        try:
            if path.is_symlink():
                report.kind = "symlink"
                report.add(path.name, Outcome.REFUSED, "symbolic link: not followed (drop the files themselves)")
            elif path.is_dir():
                report.kind = "folder"
                self._import_folder(path, report, origin)
            elif path.is_file() and _looks_like_zip(path):
                report.kind = "zip"
                self._import_zip(path, path.name, report, origin)
            elif path.is_file():
                self._import_file(path, path.name, report, origin)
            else:
                report.add(path.name, Outcome.REFUSED, "not a regular file, folder or zip archive")
        except _DiskFull:
            log.warning("Import of %s paused: the disk guard tripped; it is imported again when there is room", path.name)
            return None
        except _Stopped:
            log.info("Import of %s interrupted by stop; it will be imported again at the next start", path.name)
            return None
        finally:
            # The batch no longer delivers: completion may now decide the studies it touched.
            self.store.end_delivery(origin.assoc_id)
        self._file_away(path, report)
        counts = report.counts()
        log.info(
            "Imported %s (%s) in %.1fs: %s -> %s",
            path.name,
            report.kind,
            time.monotonic() - started,
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty",
            report.destination,
        )
        return report

    def _check_stop(self) -> None:
        if self._loop.stopping.is_set():
            raise _Stopped
        if not self.disk_ok():
            raise _DiskFull

    def _import_folder(self, root: Path, report: BatchReport, origin: Origin) -> None:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            dirnames.sort()
            for name in list(dirnames):
                if (here / name).is_symlink():
                    # os.walk does not descend into it (followlinks=False); say so in the report.
                    report.add(_rel(root, here / name), Outcome.SKIPPED, "symbolic link: not followed")
            for name in sorted(filenames):
                self._check_stop()
                path = here / name
                rel = _rel(root, path)
                try:
                    mode = path.lstat().st_mode
                except OSError as exc:
                    report.add(rel, Outcome.REFUSED, f"cannot read: {exc.strerror}")
                    continue
                if stat.S_ISLNK(mode):
                    report.add(rel, Outcome.SKIPPED, "symbolic link: not followed")
                elif not stat.S_ISREG(mode):
                    report.add(rel, Outcome.SKIPPED, "not a regular file")
                elif _looks_like_zip(path):
                    # One level: a zip inside a dropped folder is imported like a dropped zip (zips in zips are not).
                    self._import_zip(path, rel, report, origin)
                else:
                    self._import_file(path, rel, report, origin)

    def _import_file(self, path: Path, name: str, report: BatchReport, origin: Origin) -> None:
        try:
            if path.name.upper() == "DICOMDIR":
                report.add(name, Outcome.SKIPPED, "DICOMDIR: a media index, not an instance (the files it lists are imported)")
                return
            st = path.stat()
            size = st.st_size
            if size > self.config.max_file_bytes:
                report.add(name, Outcome.REFUSED, f"{size} bytes, above import.max_file_bytes {self.config.max_file_bytes}")
                return
            if size > _SPARSE_MIN_BYTES and st.st_blocks * 512 < size // 2:
                # Mostly holes: a length declared over data never written. Stored, it would take its full size.
                report.add(name, Outcome.REFUSED, f"a sparse file: {size} bytes declared, {st.st_blocks * 512} on disk "
                                                  "(data that was never written)")
                return
            with path.open("rb") as src:
                head = _read_head(src)
                kind = sniff(head)
                if kind is None:
                    report.add(name, Outcome.SKIPPED, "not DICOM (no DICM marker, no data element at the start)")
                    return
                tmp = self.store.new_temp_path()
                try:
                    with tmp.open("wb") as dst:
                        dst.write(head)
                        bounded_copy(src, dst, self.config.max_file_bytes - len(head))
                except (OSError, _Exceeded) as exc:
                    tmp.unlink(missing_ok=True)
                    report.add(name, Outcome.REFUSED, f"could not copy: {exc}")
                    return
        except OSError as exc:
            report.add(name, Outcome.REFUSED, f"cannot read: {exc.strerror or exc}")
            return
        self._ingest(tmp, name, kind, report, origin)

    def _import_zip(self, path: Path, name: str, report: BatchReport, origin: Origin) -> None:
        cfg = self.config
        try:
            declared = declared_member_count(path)
            if declared is not None and declared > cfg.zip_max_members:
                report.add(name, Outcome.REFUSED, f"{declared} members, above import.zip_max_members {cfg.zip_max_members}")
                return
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as exc:
            report.add(name, Outcome.REFUSED, f"not a readable zip archive: {exc}")
            return
        with archive:
            infos = archive.infolist()
            if len(infos) > cfg.zip_max_members:
                report.add(name, Outcome.REFUSED, f"{len(infos)} members, above import.zip_max_members {cfg.zip_max_members}")
                return
            declared_total = sum(i.file_size for i in infos)
            if declared_total > cfg.zip_max_total_bytes:
                report.add(
                    name,
                    Outcome.REFUSED,
                    f"declares {declared_total} bytes uncompressed, above import.zip_max_total_bytes"
                    f" {cfg.zip_max_total_bytes}; nothing read",
                )
                return
            total = 0
            for info in infos:
                self._check_stop()
                if info.is_dir():
                    continue
                member = f"{name}:{info.filename}"
                total += self._import_member(archive, info, member, cfg.zip_max_total_bytes - total, report, origin)

    def _import_member(
        self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, member: str, budget: int, report: BatchReport, origin: Origin
    ) -> int:
        """Stream one member into a node-named temp file and ingest it; return the bytes it inflated to."""
        cfg = self.config
        problem = member_problem(info, cfg)
        if problem:
            report.add(member, Outcome.REFUSED, problem)
            return 0
        base = re.split(r"[/\\]", info.filename)[-1]
        if base.upper() == "DICOMDIR":
            report.add(member, Outcome.SKIPPED, "DICOMDIR: a media index, not an instance (the files it lists are imported)")
            return 0
        ratio_cap = max(cfg.zip_ratio_floor_bytes, int(cfg.zip_max_ratio * max(info.compress_size, 1)))
        limit = min(cfg.max_file_bytes, ratio_cap, budget)
        tmp: Path | None = None
        written = 0
        try:
            with archive.open(info) as src:
                head = _read_head(src)
                if head.startswith(_ZIP_MAGIC) or base.lower().endswith(".zip"):
                    report.add(member, Outcome.REFUSED, "nested zip archive: not imported (unzip it and drop its contents)")
                    return len(head)
                kind = sniff(head)
                if kind is None:
                    report.add(member, Outcome.SKIPPED, "not DICOM (no DICM marker, no data element at the start)")
                    return len(head)
                tmp = self.store.new_temp_path()
                with tmp.open("wb") as dst:
                    dst.write(head)
                    written = len(head) + bounded_copy(src, dst, limit - len(head))
        except _Exceeded as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            which = (
                f"import.max_file_bytes {cfg.max_file_bytes}" if limit == cfg.max_file_bytes
                else f"import.zip_max_ratio {cfg.zip_max_ratio:g}:1" if limit == ratio_cap
                else f"import.zip_max_total_bytes {cfg.zip_max_total_bytes} for the archive"
            )
            report.add(member, Outcome.REFUSED, f"inflated past {limit} bytes ({which}); stopped reading (zip bomb?)")
            return int(exc.args[0])
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            report.add(member, Outcome.REFUSED, f"corrupt member: {exc}")
            return written
        self._ingest(tmp, member, kind, report, origin)
        return written

    def _ingest(self, tmp: Path, name: str, kind: str, report: BatchReport, origin: Origin) -> None:
        """Hand a candidate temp file to the store (the one path network instances take) and record the outcome."""
        try:
            if kind == "raw":
                try:
                    tmp = self._with_file_meta(tmp)
                except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, struct.error, AttributeError) as exc:
                    report.add(name, Outcome.REFUSED, f"a dataset without file meta that cannot be read: {exc}")
                    return
            meta = _file_meta(tmp)
            if meta.text(_MEDIA_STORAGE_SOP_CLASS) == MEDIA_STORAGE_DIRECTORY:
                tmp.unlink(missing_ok=True)
                report.add(name, Outcome.SKIPPED, "DICOMDIR: a media index, not an instance")
                return
            ts = meta.transfer_syntax
            if uid_problem(ts or None):
                # Without a transfer syntax the store would have to guess by parsing the whole file (slow on a
                # hostile one); the original stays with the item in failed/.
                tmp.unlink(missing_ok=True)
                report.add(name, Outcome.REFUSED, "Part 10 file without a valid TransferSyntaxUID in its file meta")
                return
            try:
                result = self.store.ingest(tmp, origin, transfer_syntax=ts)
            except StoreError as exc:
                transient = exc.status in (STATUS_STORE_FAILED, STATUS_OUT_OF_RESOURCES)
                outcome = Outcome.REFUSED if transient else Outcome.QUARANTINED
                report.add(name, outcome, f"0x{exc.status:04X} {exc.reason}")
                return
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            report.add(name, Outcome.REFUSED, f"I/O error: {exc}")
            return
        except Exception as exc:  # one unexpected failure must not lose the siblings of this member
            log.exception("Unexpected error importing %s", _printable(name))
            tmp.unlink(missing_ok=True)
            report.add(name, Outcome.REFUSED, f"internal error: {type(exc).__name__}: {exc}")
            return
        if result.conflict:
            report.add(name, Outcome.CONFLICT, f"SOP instance {result.sop_uid} already stored with other content")
        elif result.duplicate:
            report.add(name, Outcome.DUPLICATE, result.sop_uid)
        else:
            report.add(name, Outcome.STORED, result.sop_uid)

    def _with_file_meta(self, raw: Path) -> Path:
        """Give a dataset without file meta a Part 10 header; the dataset bytes are kept exactly as they were."""
        out: Path | None = None
        try:
            # The identifying UIDs sit near the start: parse a bounded head, never a whole hostile file.
            ds = dcmread(
                io.BytesIO(_head_bytes(raw, _META_MAX)), force=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
            )
            sop_class, sop_uid = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
            for keyword, value in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_uid)):
                if problem := uid_problem(value or None):
                    raise ValueError(f"{keyword} {problem}")
            meta_ts = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta else None
            out = self.store.new_temp_path()
            with raw.open("rb") as src, out.open("wb") as dst:
                dst.write(b"\x00" * 128 + b"DICM")
                if not meta_ts:
                    # pydicom detected the encoding while reading; the meta we write declares it.
                    implicit, little = ds.original_encoding
                    ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
                    meta = FileMetaDataset()
                    meta.MediaStorageSOPClassUID = UID(sop_class)
                    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
                    meta.TransferSyntaxUID = ts
                    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
                    write_file_meta_info(DicomFileLike(dst), meta, enforce_standard=True)
                # else: the file starts with its own group 0002; only the preamble was missing.
                shutil.copyfileobj(src, dst, _CHUNK)
        except BaseException:
            raw.unlink(missing_ok=True)
            if out is not None:
                out.unlink(missing_ok=True)
            raise
        raw.unlink(missing_ok=True)
        return out

    # ------------------------------------------------------------ filing

    def _file_away(self, path: Path, report: BatchReport) -> None:
        """Report first, then move: a crash in between re-imports the item (idempotent) and rewrites the report."""
        target_dir = self.failed if report.failed else self.done
        dest = target_dir / path.name
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            if dest.exists() or dest.is_symlink() or (target_dir / f"{path.name}{REPORT_SUFFIX}").exists():
                stem, dot, suffix = path.name.partition(".")
                dest = target_dir / f"{stem}-{report.batch_id}{dot}{suffix}"
            report.destination = dest
            tmp = target_dir / f".{dest.name}{REPORT_SUFFIX}.tmp"
            with tmp.open("w", encoding="utf-8") as fh:
                fh.write(report.text())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target_dir / f"{dest.name}{REPORT_SUFFIX}")
            if self.config.delete_imported and not report.failed:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                report.destination = None
            else:
                os.rename(path, dest)
            fsync_dir(target_dir)
            fsync_dir(self.folder)
        except OSError as exc:
            log.error(
                "Imported %s but could not file it under %s: %s; it is not imported again until it changes",
                path.name,
                target_dir,
                exc,
            )
            report.destination = None
            with contextlib.suppress(OSError), self._lock:
                self._stuck[path.name] = _signature(path)


def _signature(path: Path) -> tuple[int, ...]:
    """Changes while an item is still being copied in: size and mtime (for a folder, of everything in it)."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        return (st.st_size, st.st_mtime_ns)
    count, size, newest = 0, 0, st.st_mtime_ns
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                s = (Path(dirpath) / name).lstat()
                count += 1
                size += s.st_size if stat.S_ISREG(s.st_mode) else 0
                newest = max(newest, s.st_mtime_ns)
    return (count, size, newest)


def _looks_like_zip(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    try:
        with path.open("rb") as fh:
            return fh.read(4) in _ZIP_MAGIC
    except OSError:
        return False


def _head_bytes(path: Path, n: int) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def _file_meta(path: Path) -> reader.FileMeta:
    """The file meta of a Part 10 file (an empty one when it cannot be read)."""
    try:
        return reader.read_meta(path)
    except (OSError, ValueError):  # reader.ReadError is a ValueError
        return reader.FileMeta({}, 0)


def _rel(root: Path, path: Path) -> str:
    return f"{root.name}/{path.relative_to(root).as_posix()}"
