"""The inbox: pick up complete request files (watchdog + rescans), move them to active/done/failed, write status files."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from watchdog.events import FileSystemEvent, FileSystemEventHandler

from node import failpoints
from node.background import Loop, start_observer, stop_observer
from node.config import Config
from node.pull import requests as requests_mod
from node.pull.requests import RequestError
from node.pull.scheduler import COMPLETE, FAILED, MOVING, QUERYING, QUEUED, R_DONE, R_FAILED, WAITING, Scheduler
from node.store.store import Store, fsync_dir

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".csv")
ACTIVE, DONE, FAILED_DIR = "active", "done", "failed"
# Folders of the inbox that are not requests: ours, and the importer's (node/importer.py IMPORT_DIR).
_OWN_FOLDERS = frozenset({ACTIVE, DONE, FAILED_DIR, "import"})


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).astimezone().isoformat(timespec="seconds")


def is_candidate(path: Path) -> bool:
    """A request file by name: *.yaml/*.yml/*.csv, not hidden (editors and copy tools write hidden temp files)."""
    return path.suffix.lower() in SUFFIXES and not path.name.startswith(".")


def _unique(folder: Path, name: str) -> Path:
    target = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 2
    while target.exists():
        target = folder / f"{stem}-{n}{suffix}"
        n += 1
    return target


FINAL_MARK = "# status of request"
_ERROR_TEXT_MAX = 4000  # an error file or reason quotes at most this much of a bad value


def _capped(text: str, limit: int = _ERROR_TEXT_MAX) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def _is_final(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as fh:
            return fh.readline().rstrip().endswith(", final")
    except OSError:
        return False


def _printable(name: str) -> str:
    """A file name for the log: control characters, escapes and undecodable bytes shown escaped, never raw."""
    return name if name.isprintable() else repr(name)[1:-1]


def _safe_name(name: str) -> str:
    """The name a request file is filed under: printable, valid UTF-8, at most 120 bytes, its suffix kept.
    (A name with undecodable bytes, control characters or 240 bytes could not take a -N or .error.txt suffix.)"""
    cleaned = "".join("_" if not c.isprintable() or "\udc80" <= c <= "\udcff" or c in "/\\" else c for c in name)
    stem, suffix = Path(cleaned).stem, Path(cleaned).suffix
    suffix = suffix if len(suffix) <= 8 else ""
    while len((stem + suffix).encode("utf-8")) > 120:
        stem = stem[:-1]
    return (stem or "request") + suffix


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")  # one temp name per writer thread
    with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when PyYAML has it: the same text, faster


def dump_status(doc: dict[str, Any]) -> str:
    return str(yaml.dump(doc, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, width=120))


def study_display_state(item_state: str, study_state: str | None, received: int | None, expected: int | None) -> str:
    """What the user reads for one study: the pull's state, then the processor's (studies.state)."""
    if item_state == MOVING:
        return f"moving {received or 0}/{expected or 0}"
    if item_state == WAITING:
        return "waiting for window"
    if item_state in (QUEUED, QUERYING, FAILED):
        return item_state
    if item_state == COMPLETE:
        if study_state in ("processing", "done", "failed"):
            return study_state
        if study_state == "discarded":
            return "failed"
        return "complete"
    return item_state


def status_document(store: Store, rid: int) -> dict[str, Any] | None:
    """The status of one request as a plain mapping (the status file, and `daemon.py status`)."""
    rows = store.query(
        "SELECT name, file_name, file_location, peer, outputs, priority, not_before, state, reason, created"
        " FROM requests WHERE id=?", (rid,))
    if not rows:
        return None
    name, file_name, location, peer, outputs, priority, not_before, state, reason, created = rows[0]
    queries = []
    for query, q_state, attempts, next_attempt, q_reason, found in store.query(
        "SELECT query, state, attempts, next_attempt, reason, found FROM request_queries WHERE request_id=? ORDER BY idx",
        (rid,),
    ):
        entry: dict[str, Any] = {"query": json.loads(query), "state": q_state}
        if found is not None:
            entry["studies_found"] = found
        if attempts:
            entry["attempts"] = attempts
        if q_state in (QUEUED, WAITING) and (attempts or q_state == WAITING or next_attempt > time.time()):
            entry["next_attempt"] = _iso(next_attempt)
        if q_reason:
            entry["reason"] = q_reason
        queries.append(entry)
    # One grouped query for every series of the request (not one per study: that was quadratic).
    series_states: dict[str, dict[str, int]] = {}
    for study_uid, s_state, n in store.query(
            "SELECT study_uid, state, COUNT(*) FROM request_series WHERE request_id=? GROUP BY study_uid, state", (rid,)):
        series_states.setdefault(str(study_uid), {})[str(s_state)] = int(n)
    studies = []
    for (study_uid, accession, patient_id, study_date, rs_state, attempts, next_attempt, rs_reason, expected,
         received, st_state, st_reason, outbox) in store.query(
        "SELECT rs.study_uid, rs.accession, rs.patient_id, rs.study_date, rs.state, rs.attempts, rs.next_attempt,"
        " rs.reason, rs.expected, rs.received, st.state, st.reason, st.outbox_path FROM request_studies rs"
        " LEFT JOIN studies st ON st.study_uid=rs.study_uid LEFT JOIN request_queries q ON q.id=rs.query_id"
        " WHERE rs.request_id=? ORDER BY q.idx, rs.id", (rid,),
    ):
        shown = study_display_state(rs_state, st_state, received, expected)
        if rs_state == WAITING and str(rs_reason or "").startswith("waiting for disk space"):
            shown = "waiting for disk space"
        study: dict[str, Any] = {"study_uid": study_uid, "accession": accession, "patient_id": patient_id,
                                 "study_date": study_date, "state": shown}
        if expected is not None:
            study["instances"] = f"{received or 0}/{expected}"
        series = series_states.get(study_uid)
        if series:
            study["series"] = series
        if attempts:
            study["attempts"] = attempts
        if rs_state in (QUEUED, WAITING) and attempts:
            study["next_attempt"] = _iso(next_attempt)
        if shown == "done" and outbox:
            study["outbox"] = outbox
        why = st_reason if shown == "failed" and rs_state == COMPLETE else rs_reason
        if why and shown not in ("complete", "processing", "done"):
            study["reason"] = why
        studies.append(study)
    counts: dict[str, int] = {}
    for s in studies:
        key = "moving" if str(s["state"]).startswith("moving") else str(s["state"])
        counts[key] = counts.get(key, 0) + 1
    doc: dict[str, Any] = {
        "request": name,
        "file": f"inbox/{location}/{file_name}" if location != "inbox" else f"inbox/{file_name}",
        "state": state,
    }
    if reason:
        doc["reason"] = reason
    doc.update({
        "peer": peer,
        "priority": priority,
        "outputs": json.loads(outputs),
        "not_before": _iso(not_before),
        "received": _iso(created),
        "summary": counts,
        "queries": queries,
        "studies": studies,
    })
    return doc


class _Events(FileSystemEventHandler):
    """Watchdog thread side: only notes paths and wakes the inbox thread (no I/O in the event path)."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if event.event_type == "moved":
            self.inbox.note(Path(os.fsdecode(event.dest_path)), renamed=True)
        elif event.event_type in ("created", "modified", "closed"):
            self.inbox.note(Path(os.fsdecode(event.src_path)), renamed=False)


class Inbox:
    """Owns inbox/ and outbox/requests/: accepts request files once complete and reports each request's status."""

    def __init__(self, config: Config, store: Store, scheduler: Scheduler) -> None:
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.root = config.paths.inbox
        self.status_dir = config.paths.outbox / "requests"
        for folder in (self.root, self.root / ACTIVE, self.root / DONE, self.root / FAILED_DIR, self.status_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._loop = Loop("inbox", self._pass, lambda: 1.0, log)
        self._next_rescan = 0.0
        self._pending: set[Path] = set()
        self._renamed: set[Path] = set()
        self._lock = threading.Lock()
        self._files_lock = threading.RLock()
        self._last_status: dict[int, str] = {}
        self._warned: set[str] = set()
        self._observer: Any = None
        self._merges: ThreadPoolExecutor | None = None
        scheduler.on_change = self.request_changed

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Repair what a kill left half done, rescan at once (events may have been missed while stopped), watch."""
        # Merged workbooks are built off the status thread: a request of thousands of studies takes minutes.
        self._merges = ThreadPoolExecutor(1, thread_name_prefix="merged-workbook")
        self.recover()
        self._next_rescan = 0.0
        self._observer = start_observer(self.root, _Events(self))
        self._loop.start()
        log.info("Watching %s for request files", self.root)

    def stop(self) -> None:
        stop_observer(self._observer)
        self._observer = None
        self._loop.stop()
        merges, self._merges = self._merges, None
        if merges is not None:
            # A merge under way finishes (its file appears whole or not at all); queued ones wait for the next start.
            merges.shutdown(wait=False, cancel_futures=True)

    def reload(self, config: Config) -> None:
        self.config = config

    def health(self, stall_after_s: float) -> tuple[bool, str]:
        return self._loop.health(stall_after_s)

    def note(self, path: Path, renamed: bool) -> None:
        if path.parent != self.root or not is_candidate(path):
            return
        with self._lock:
            self._pending.add(path)
            if renamed:
                self._renamed.add(path)
        self._loop.wake()

    def _pass(self) -> float:
        """Pick up pending files; rescan and refresh status files when their time has come; return the next wait."""
        now = time.monotonic()
        if now >= self._next_rescan:
            self.rescan()
            self._next_rescan = now + self.config.requests.rescan_interval_s
        wait_for = self.process_pending()
        return min(self._next_rescan - time.monotonic(), wait_for)

    # ------------------------------------------------------------------ pick-up

    def rescan(self) -> None:
        """The safety net: every candidate in the inbox becomes pending (watchdog events are only the fast path)."""
        with os.scandir(self.root) as entries:
            listed = list(entries)
        found = [Path(e.path) for e in listed if e.is_file(follow_symlinks=False) and is_candidate(Path(e.path))]
        with self._lock:
            self._pending.update(found)
        for entry in listed:
            self._warn_if_misplaced(entry)
            if is_candidate(Path(entry.path)) and not entry.is_file(follow_symlinks=False):
                self._skip_once(Path(entry.path))

    def _warn_if_misplaced(self, entry: os.DirEntry[str]) -> None:
        """DICOM (or anything else) dropped next to the request files is not read: say where it belongs, once."""
        name = entry.name
        if name.startswith(".") or name in _OWN_FOLDERS or is_candidate(Path(entry.path)) or name in self._warned:
            return
        self._warned.add(name)
        log.warning(
            "inbox/%s is not a request file (*.yaml, *.yml, *.csv) and is left alone; DICOM files, folders and "
            "zip archives to import go into inbox/import/",
            _printable(name),
        )

    def process_pending(self, now: float | None = None) -> float:
        """Take every pending file that is complete; return seconds until the next one may be (inf if none)."""
        now = time.time() if now is None else now
        settle = self.config.requests.settle_s
        with self._lock:
            pending = sorted(self._pending)
        wait = float("inf")
        for path in pending:
            try:
                st = path.lstat()
            except FileNotFoundError:
                self._forget(path)
                continue
            with self._lock:
                renamed = path in self._renamed
            age = now - st.st_mtime
            if not renamed and age < settle:
                wait = min(wait, settle - age)  # still being written, or written a moment ago: look again later
                continue
            self._forget(path)
            try:
                self.take(path)
            except OSError as exc:
                log.error("Cannot take request file %r: %s", path.name, exc)
            except Exception as exc:  # logged with its traceback; one file must never jam the inbox
                log.exception("Unexpected error reading request file %r; moving it to failed/", path.name)
                try:
                    self._refuse(path, [f"At '<file>': the node could not read this request ({type(exc).__name__}: "
                                        f"{str(exc)[:200]})"])
                except OSError as move_error:
                    log.error("Cannot move %r to failed/: %s", path.name, move_error)
        return wait

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._pending.discard(path)
            self._renamed.discard(path)

    def take(self, path: Path) -> int | None:
        """Validate one complete file and hand it to the scheduler; an invalid file goes to failed/ with the reason."""
        if not path.is_file() or path.is_symlink():
            self._skip_once(path)
            return None
        safe = _safe_name(path.name)  # the name the node files it under (and names the request after)
        size = path.stat().st_size
        limit = self.config.requests.max_file_bytes
        if size > limit:
            # Not read at all: a huge file is refused on its size.
            self._refuse(path, [f"At '<file>': {size} bytes is larger than the limit of {limit} bytes "
                                "(requests.max_file_bytes)"], safe)
            return None
        raw = path.read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        known = self.store.query(
            "SELECT id, name, file_name, file_location, state, created FROM requests WHERE sha256=? ORDER BY id DESC LIMIT 1",
            (sha,))
        if known:
            rid, name, file_name, location, state, created = known[0]
            if location == "inbox" and file_name == safe:
                self._activate(int(rid), path, safe)  # a stop between recording and moving it: finish the move
                return int(rid)
            self._refuse(path, [f"At '<file>': same content as request {name!r} received {_iso(created)} "
                                f"(state {state}): not run again. To run it again, change the file "
                                "(a comment line is enough) and drop it in again."], safe)
            return None
        try:
            request = requests_mod.parse(safe, raw, list(self.config.peers), limit,
                                         name=self._unique_name(Path(safe).stem))
        except RequestError as exc:
            self._refuse(path, exc.problems, safe)
            return None
        with self._files_lock:
            rid = self.scheduler.submit(request, safe)
            self._activate(rid, path, safe)
        return rid

    def submit_text(self, stem: str, text: str) -> int:
        """A request that did not come as a dropped file (the web API): the same validation and scheduler as a
        dropped file, and its YAML is filed in inbox/active/ like one, so its lifecycle (done/, failed/, status
        file, recovery) is the same. RequestError lists the problems; nothing is recorded then."""
        raw = text.encode("utf-8")
        safe = _safe_name(f"{stem}.yaml")
        sha = hashlib.sha256(raw).hexdigest()
        limit = self.config.requests.max_file_bytes
        with self._files_lock:
            if self.store.query("SELECT 1 FROM requests WHERE sha256=?", (sha,)):
                raise RequestError(["At '<request>': the same request was already received; change something to send it again"])
            request = requests_mod.parse(safe, raw, list(self.config.peers), limit, name=self._unique_name(Path(safe).stem))
            # Recorded first, then filed: a kill in between leaves a request that runs with no file, never a
            # file that nobody runs.
            rid = self.scheduler.submit(request, safe)
            target = _unique(self.root / ACTIVE, safe)
            _write_atomic(target, text)
            fsync_dir(target.parent)
            with self.store.transaction() as db:
                db.execute("UPDATE requests SET file_name=?, file_location=? WHERE id=?", (target.name, ACTIVE, rid))
        self.request_changed(rid)
        return rid

    def _skip_once(self, path: Path) -> None:
        """A symlink, FIFO, socket or folder named like a request is never read: say so once, not at every scan."""
        if path.name in self._warned:
            return
        self._warned.add(path.name)
        kind = ("a symbolic link" if path.is_symlink() else "a folder" if path.is_dir()
                else "not a regular file (FIFO, socket or device)" if path.exists() else None)
        if kind is not None:
            log.warning("inbox/%s is %s: ignored (only regular files are read as requests)", _printable(path.name), kind)

    def _unique_name(self, stem: str) -> str:
        name, n = stem, 2
        while self.store.query("SELECT 1 FROM requests WHERE name=?", (name,)):
            name, n = f"{stem}-{n}", n + 1
        return name

    def _activate(self, rid: int, path: Path, safe: str) -> None:
        with self._files_lock:
            target = _unique(self.root / ACTIVE, safe)
            os.replace(path, target)
            fsync_dir(target.parent)
            failpoints.hit(failpoints.REQUEST_FILE_ACTIVATED)
            with self.store.transaction() as db:
                db.execute("UPDATE requests SET file_name=?, file_location=? WHERE id=?", (target.name, ACTIVE, rid))
        self.request_changed(rid)

    def _refuse(self, path: Path, problems: list[str], safe: str | None = None) -> None:
        target = _unique(self.root / FAILED_DIR, safe or _safe_name(path.name))
        when = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
        shown = problems[:50] + ([f"... and {len(problems) - 50} more problem(s)"] if len(problems) > 50 else [])
        renamed = f" (filed as {target.name})" if target.name != path.name else ""
        text = (f"Request file {_printable(path.name)}{renamed} was refused ({when}), {len(problems)} problem(s):\n"
                + "".join(f"  {_capped(p, 500)}\n" for p in shown)
                + "\nNothing was run. Fix the file and drop it into the inbox again.\n")
        # The reason first, then the file: whoever sees a refused file in failed/ finds its reason beside it.
        _write_atomic(target.with_name(target.name + ".error.txt"), _capped(text, 64_000))
        os.replace(path, target)
        fsync_dir(target.parent)
        log.warning("Request file %s refused: %s", _printable(path.name), _capped("; ".join(problems), 2000))

    # ------------------------------------------------------------------ status

    def request_changed(self, rid: int) -> None:
        """Rewrite the request's status file if its content changed; move the request file once it is final."""
        with self._files_lock:
            doc = status_document(self.store, rid)
            if doc is None:
                return
            if doc["state"] in (R_DONE, R_FAILED):
                # Once finished: the file moves and the final status is written, once (a kill in between is
                # repaired by recover() at start).
                if not (str(doc["file"]).startswith((f"inbox/{DONE}/", f"inbox/{FAILED_DIR}/"))
                        and _is_final(self.status_path(str(doc["request"])))):
                    self._finish_file(rid, str(doc["state"]), doc.get("reason"))
                return
            text = dump_status(doc)
            if self._last_status.get(rid) != text:
                stamped = f"{FINAL_MARK} {doc['request']}, updated {datetime.now(UTC).astimezone().isoformat()}\n"
                _write_atomic(self.status_path(str(doc["request"])), stamped + text)
                self._last_status[rid] = text

    def status_path(self, name: str) -> Path:
        return self.status_dir / f"{name}.status.yaml"

    def _finish_file(self, rid: int, state: str, reason: str | None) -> None:
        """Move a finished request's file to done/ or failed/, then record it, then write the final status.

        Idempotent, and safe whatever instant a kill hits: recover() calls it again at start, and a file
        already moved (the kill came before the database update) is found by its content."""
        (file_name, location, sha, recorded_reason) = self.store.query(
            "SELECT file_name, file_location, sha256, reason FROM requests WHERE id=?", (rid,))[0]
        reason = reason or recorded_reason
        folder = DONE if state == R_DONE else FAILED_DIR
        if location == ACTIVE:
            source = self.root / ACTIVE / file_name
            if source.exists():
                target: Path | None = _unique(self.root / folder, file_name)
                assert target is not None
                os.replace(source, target)
                fsync_dir(target.parent)
                failpoints.hit(failpoints.REQUEST_FILE_FINISHED)
            else:
                target = self._find_by_content(str(sha), str(file_name), (folder,))
            if target is not None:
                with self.store.transaction() as db:
                    db.execute("UPDATE requests SET file_name=?, file_location=? WHERE id=?", (target.name, folder, rid))
                log.info("Request %d %s: file moved to inbox/%s/%s", rid, state, folder, _printable(target.name))
                file_name, location = target.name, folder
                failpoints.hit(failpoints.REQUEST_ROW_FINISHED)
        if state == R_FAILED and location == FAILED_DIR:
            error_file = self.root / FAILED_DIR / f"{file_name}.error.txt"
            if not error_file.exists():
                _write_atomic(error_file, f"Request {file_name} failed: {_capped(reason or 'see the status file')}\n"
                                          f"Status: {self.status_path(str(self._name(rid)))}\n")
                fsync_dir(error_file.parent)
        self._last_status.pop(rid, None)
        self._write_final_status(rid)
        self._schedule_merge(rid)

    def _write_final_status(self, rid: int) -> None:
        doc = status_document(self.store, rid)
        if doc is None:
            return
        if "excel_merged" in doc["outputs"] and self.merged_workbook_path(str(doc["request"])).exists():
            doc["merged_workbook"] = f"outbox/requests/{doc['request']}.xlsx"
        _write_atomic(self.status_path(str(doc["request"])), f"{FINAL_MARK} {doc['request']}, final\n" + dump_status(doc))

    def merged_workbook_path(self, name: str) -> Path:
        return self.status_dir / f"{name}.xlsx"

    def _schedule_merge(self, rid: int) -> None:
        """A done request that asked for `excel_merged` and has none yet gets it built (on the merge thread when
        the inbox runs, here otherwise); the final status names it once it exists."""
        rows = self.store.query("SELECT name, outputs, state FROM requests WHERE id=?", (rid,))
        if not rows or rows[0][2] != R_DONE or "excel_merged" not in json.loads(rows[0][1]):
            return
        if self.merged_workbook_path(str(rows[0][0])).exists():
            return
        if self._merges is None:
            self._merge(rid, str(rows[0][0]))
        else:
            self._merges.submit(self._merge, rid, str(rows[0][0]))

    def _merge(self, rid: int, name: str) -> None:
        if self._merged_workbook(rid, name) is not None:
            with self._files_lock:
                self._write_final_status(rid)

    def _merged_workbook(self, rid: int, name: str) -> Path | None:
        """The request's merged workbook, built once from its studies' workbooks."""
        target = self.merged_workbook_path(name)
        if target.exists():
            return target
        from node.process.workbook.merged import merge_workbooks

        rows = self.store.query(
            "SELECT DISTINCT st.outbox_path FROM request_studies rs JOIN studies st ON st.study_uid=rs.study_uid"
            " WHERE rs.request_id=? AND st.state='done' AND st.outbox_path IS NOT NULL ORDER BY st.outbox_path", (rid,))
        sources = [(str(f), self.config.paths.outbox / str(f) / "metadata.xlsx") for (f,) in rows]
        sources = [(f, p) for f, p in sources if p.is_file()]
        if not sources:
            return None
        try:
            merge_workbooks(sources, target)
        except Exception as exc:  # noqa: BLE001 - on the merge thread: logged, the request stays done without it
            log.error("Request %s: the merged workbook could not be written: %s", name, exc)
            return None
        return target

    def _find_by_content(self, sha: str, file_name: str, folders: tuple[str, ...]) -> Path | None:
        """The request file with this content in one of the folders (its name there may have a -N suffix)."""
        stem = Path(file_name).stem
        for folder in folders:
            for path in sorted((self.root / folder).glob(f"{glob.escape(stem)}*")):
                if path.is_file() and not path.name.endswith(".error.txt"):
                    with contextlib.suppress(OSError):
                        if hashlib.sha256(path.read_bytes()).hexdigest() == sha:
                            return path
        return None

    def recover(self) -> None:
        """At start: make every request's file, database row and status file agree again, whatever instant a
        kill hit (the request lifecycle and each repair are written down in docs/requests.md)."""
        rows = self.store.query("SELECT id, name, file_name, file_location, state, sha256 FROM requests"
                                " WHERE file_location IN (?, ?) OR state IN (?, ?)", ("inbox", ACTIVE, R_DONE, R_FAILED))
        for row in rows:
            # Under the files lock: the request-status thread may be finishing the same request right now.
            with self._files_lock:
                try:
                    self._recover_one(*row)
                except (OSError, sqlite3.Error) as exc:
                    log.error("Request %s could not be repaired at start (%s); retried at the next start", row[1], exc)

    def _recover_one(self, rid: int, name: str, file_name: str, location: str, state: str, sha: str) -> None:
        if location == "inbox" and not (self.root / file_name).exists():
            # Moved to active/ but the kill came before the database said so.
            found = self._find_by_content(sha, file_name, (ACTIVE,))
            if found is not None:
                with self.store.transaction() as db:
                    db.execute("UPDATE requests SET file_name=?, file_location=? WHERE id=?", (found.name, ACTIVE, rid))
                log.info("Request %s: file found in inbox/active/ after a restart", name)
        if state in (R_DONE, R_FAILED):
            final = self.status_path(str(name))
            settled = location in (DONE, FAILED_DIR) and _is_final(final)
            if not settled:
                self._finish_file(rid, str(state), None)
                log.info("Request %s: %s before a restart; its file and final status are settled now", name, state)
            else:
                self._schedule_merge(rid)  # a stop before its merged workbook was built

    def _name(self, rid: int) -> str:
        return str(self.store.query("SELECT name FROM requests WHERE id=?", (rid,))[0][0])


def write_request(inbox: Path, name: str, text: str) -> Path:
    """Drop a request file into the inbox whole: written to a hidden temp name, then renamed in."""
    target = _unique(inbox, f"{name}.yaml")
    tmp = inbox / f".{target.name}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target
