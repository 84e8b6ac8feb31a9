"""Watchdog-triggered study processing: ready markers -> worker processes -> whole folders in outbox/."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import platform
import resource
import shutil
import tempfile
import threading
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from node import __version__, adapters, failpoints
from node.background import Loop, start_observer, stop_observer
from node.config import Config, NiftiOptions
from node.dicom.validators import is_legacy_uid, is_storable_uid
from node.ops.metrics import Metrics
from node.process import completion, qc_report
from node.process.executors import DaskPool
from node.process.outbox import TEMP_PREFIX, FolderTaken, disambiguate, folder_name, owner, publish, sweep
from node.process.qc import QcConfig
from node.store import state
from node.store.state import StudyState
from node.store.store import Store, file_sha256

log = logging.getLogger(__name__)

ALL_OUTPUTS = ("excel", "nifti", "npz")
# outbox/requests/ holds the request status files; no study folder may take that name.
RESERVED_FOLDERS = frozenset({"requests"})


@dataclass(frozen=True)
class StudyJob:
    """Everything a worker process needs to build one study version (plain values: it crosses processes)."""

    study_uid: str
    version: int
    may_be_incomplete: bool
    reason: str
    store_dir: str
    outbox_dir: str
    folder: str
    outputs: tuple[str, ...]
    nifti_options: NiftiOptions = field(default_factory=NiftiOptions)
    qc: QcConfig | None = None
    workbook_headers: str = "label"
    metadata_rows: str = "instance"
    templates_dir: str | None = None
    mr_clean_config: str | None = None
    # The previous version's folder when the name changed (identifiers corrected): removed once this one is out.
    replaces_folder: str | None = None


@dataclass(frozen=True)
class JobResult:
    study_uid: str
    version: int
    folder: str
    ok: bool
    reason: str
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"dicom-node": __version__, "python": platform.python_version()}
    for package in ("pydicom", "pynetdicom", "SimpleITK", "pandas", "openpyxl", "numpy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


def _worker_init(memory_mb: int | None = None, node_pid: int | None = None, tmp_dir: str | None = None) -> None:
    """In each worker: die with the node (no orphan publishing after a crash), bound its memory, and import
    the heavy stack once."""
    if memory_mb:
        # A study that needs more than this fails in its own worker (MemoryError or a dead worker) instead of
        # growing until the kernel or systemd's MemoryMax kills the whole node, receiver included.
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, 9)  # SIGKILL when the parent dies
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")
    if tmp_dir is not None:
        # Temporary files (openpyxl's, numpy's) go under the node's own folders, which the systemd unit makes
        # writable and the disk guard watches, never to /tmp.
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
        os.environ["TMPDIR"] = tmp_dir
        tempfile.tempdir = tmp_dir
    if node_pid is not None and os.getppid() != node_pid:
        # The node died while this worker was starting, before the death signal was armed: nobody will ever
        # send it work or stop it, so it must not linger (holding memory and the resource tracker's pipe).
        os._exit(1)


def _warm() -> int:
    return os.getpid()


def _series_files(study_dir: Path) -> dict[str, list[Path]]:
    series: dict[str, list[Path]] = {}
    if not study_dir.is_dir():
        return series
    for series_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
        files = sorted(series_dir.glob("*.dcm"))
        if files:
            series[series_dir.name] = files
    return series


def _published_version(folder: Path, study_uid: str) -> int | None:
    """The version published in folder for this study (its manifest), or None."""
    try:
        data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("study_uid") != study_uid:
        return None
    try:
        return int(data.get("version", -1))
    except (TypeError, ValueError):
        return None


def _legacy_uids(study_uid: str, series: dict[str, list[Path]]) -> list[str]:
    """Study, series and instance UIDs with leading zeros in a component (names in the store are the UIDs)."""
    found = [study_uid] if is_legacy_uid(study_uid) else []
    for series_uid, files in series.items():
        if is_legacy_uid(series_uid):
            found.append(series_uid)
        found.extend(f.stem for f in files if is_legacy_uid(f.stem))
    return found


def run_job(job: StudyJob) -> JobResult:
    """Build a study's outputs in a staging folder, then publish it whole. Runs in a worker process."""
    started = time.monotonic()
    outbox = Path(job.outbox_dir)
    study_dir = Path(job.store_dir) / job.study_uid
    published = _published_version(outbox / job.folder, job.study_uid)
    if published is not None and published >= job.version:
        # A rerun of a job whose publish already happened (its worker was lost after publishing, and the
        # distributed scheduler ran it again): publishing again would replace the folder for nothing.
        return JobResult(job.study_uid, job.version, job.folder, True, f"version {job.version} already published",
                         seconds=time.monotonic() - started)
    staged = outbox / f"{TEMP_PREFIX}{job.study_uid}-v{job.version}-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    warnings: list[str] = []
    errors: list[str] = []
    try:
        series = _series_files(study_dir)
        if not series:
            raise RuntimeError(f"no instances on disk under {study_dir.name}")
        outcomes: dict[str, Any] = {}
        if "nifti" in job.outputs or "npz" in job.outputs:
            try:
                from node.process.nifti.convert import convert_study

                options = dataclasses.replace(job.nifti_options, npz=job.nifti_options.npz or "npz" in job.outputs,
                                              write_nifti="nifti" in job.outputs)
                outcomes = convert_study(series, staged / "nifti", options, job.qc)
            except Exception as exc:
                errors.append(f"nifti: {type(exc).__name__}: {exc}")
                log.exception("NIfTI conversion failed for study %s", job.study_uid)
        workbook_sheets: dict[str, int] = {}
        summary_rows: list[dict[str, Any]] | None = None
        if "excel" in job.outputs:
            try:
                from node.process.workbook.metadata import build_workbook

                wb = build_workbook(
                    [f for files in series.values() for f in files],
                    study_dir,
                    staged / "metadata.xlsx",
                    outcomes or None,
                    templates_dir=Path(job.templates_dir) if job.templates_dir else None,
                    mr_clean_config=Path(job.mr_clean_config) if job.mr_clean_config else None,
                    qc=job.qc,
                    headers=job.workbook_headers,
                    metadata_rows=job.metadata_rows,
                )
                workbook_sheets = dict(wb.sheets)
                summary_rows = [{str(k): v for k, v in r.items()} for r in wb.series.to_dict(orient="records")]
                warnings.extend(f"workbook: {w}" for w in wb.warnings)
            except Exception as exc:
                errors.append(f"excel: {type(exc).__name__}: {exc}")
                log.exception("Workbook failed for study %s", job.study_uid)
        if errors and len(errors) == len(job.outputs):
            raise RuntimeError("; ".join(errors))
        series_entries = []
        for series_uid, files in series.items():
            outcome = outcomes.get(series_uid)
            entry: dict[str, Any] = {"series_uid": series_uid, "instances": len(files)}
            if outcome is not None:
                entry.update(
                    volumes=outcome.volumes,
                    files=list(outcome.files),
                    previews=list(outcome.previews),
                    warnings=list(outcome.warnings),
                    skipped_reason=outcome.skipped_reason,
                    error=outcome.error,
                )
                warnings.extend(f"series {series_uid}: {w}" for w in outcome.warnings)
                if outcome.error:
                    warnings.append(f"series {series_uid}: conversion failed: {outcome.error}")
            series_entries.append(entry)
        if job.may_be_incomplete:
            warnings.insert(0, f"MAY_BE_INCOMPLETE: {job.reason}")
        legacy = _legacy_uids(job.study_uid, series)
        if legacy:
            warnings.append(f"LEGACY_UIDS: {len(legacy)} UID(s) with leading zeros in a component (pre-standard "
                            "equipment); kept as received")
        quality = None
        if job.qc is not None and job.qc.enabled:
            quality = qc_report.series_qc(list(series), outcomes, summary_rows)
            qc_report.write_html(staged / "qc_report.html", job.study_uid, quality)
        outputs = [
            {"path": str(p.relative_to(staged)), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(staged.rglob("*"))
            if p.is_file()
        ]
        manifest = {
            "study_uid": job.study_uid,
            "version": job.version,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "may_be_incomplete": job.may_be_incomplete,
            "completion": job.reason,
            "outputs_requested": list(job.outputs),
            "inputs": {"instances": sum(len(f) for f in series.values()), "series": series_entries},
            "legacy_uids": legacy,
            "outputs": outputs,
            "workbook_sheets": workbook_sheets,
            "qc": quality,
            "errors": errors,
            "warnings": warnings,
            "software": _versions(),
        }
        with (staged / "manifest.json").open("w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, ensure_ascii=False)
        folder = job.folder
        try:
            publish(staged, outbox / folder, job.study_uid)
        except FolderTaken:
            # A folder of the same name that is not ours (another study, or put there by hand) is never
            # replaced: publish beside it under the study's own disambiguated name.
            folder = disambiguate(job.folder, job.study_uid)
            log.warning("Study %s: outbox folder taken by another study; publishing under a unique name", job.study_uid)
            publish(staged, outbox / folder, job.study_uid)
        if job.replaces_folder and job.replaces_folder != folder:
            old = outbox / job.replaces_folder
            if old.is_dir() and owner(old) == job.study_uid:
                # The new version is out under the corrected name: the old name must not keep stale outputs.
                shutil.rmtree(old, ignore_errors=True)
                log.info("Study %s: outputs moved to a folder with its corrected identifiers", job.study_uid)
    except Exception as exc:  # noqa: BLE001 - a failed study is reported in its state, never crashes the pool
        shutil.rmtree(staged, ignore_errors=True)
        return JobResult(
            job.study_uid,
            job.version,
            job.folder,
            ok=False,
            reason=f"{type(exc).__name__}: {exc}",
            warnings=tuple(traceback.format_exc().splitlines()[-3:]),
            seconds=time.monotonic() - started,
        )
    summary = "; ".join(errors) if errors else "ok"
    return JobResult(job.study_uid, job.version, folder, True, summary, tuple(warnings), time.monotonic() - started)


class _ReadyHandler(FileSystemEventHandler):
    """Watchdog thread side: only wakes the dispatcher (no file or database I/O in the event path)."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def on_created(self, event: FileSystemEvent) -> None:
        self.processor.wake()

    def on_moved(self, event: FileSystemEvent) -> None:
        self.processor.wake()


class Processor:
    """Owns the worker pool and the watchdog observer on var/ready/; claims each study version exactly once."""

    def __init__(self, config: Config, store: Store, metrics: Metrics | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.ready = completion.ready_dir(store)
        self.ready.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._running: dict[str, cf.Future[JobResult]] = {}
        self._observer: Any = None
        self._pool: cf.ProcessPoolExecutor | DaskPool | None = None
        self._pool_broken = threading.Event()
        self._wedged: str | None = None
        self._loop = Loop("processor", self._dispatch_pass, lambda: self.config.processing.rescan_interval_s, log)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._recover()
        self._pool = self._new_pool()
        self._observer = start_observer(self.ready, _ReadyHandler(self))
        self._loop.start()

    def _new_pool(self) -> cf.ProcessPoolExecutor | DaskPool:
        p = self.config.processing
        if p.executor == "dask":
            return DaskPool(p.dask_scheduler, p.workers)
        # spawn: the node process runs network threads; forking it would copy their locks mid-flight.
        pool = cf.ProcessPoolExecutor(max_workers=p.workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_worker_init,
                                      initargs=(p.worker_memory_mb, os.getpid(), str(self.store.paths.var / "work")))
        # Start the workers now, so the first study does not pay for spawning and importing the stack.
        for _ in range(p.workers):
            pool.submit(_warm)
        return pool

    def wake(self) -> None:
        self._loop.wake()

    @property
    def wedged(self) -> str | None:
        """Why processing cannot go on (for /healthz), or None."""
        return self._wedged

    def health(self, stall_after_s: float) -> tuple[bool, str]:
        if self._wedged:
            return False, f"processing stopped: {self._wedged}"
        ok, detail = self._loop.health(stall_after_s)
        return (True, f"workers available; {detail}") if ok else (False, detail)

    def _dispatch_pass(self) -> None:
        """Look at the ready markers when watchdog says one appeared, and every rescan interval regardless.

        A worker that died (killed, out of memory) breaks the whole pool: it is rebuilt here, between passes,
        once the studies it was running have been handed back."""
        if self._pool_broken.is_set():
            self._rebuild_pool()
        self.rescan()

    def _rebuild_pool(self) -> None:
        with self._lock:
            if self._running:
                return  # the broken pool's futures are still being failed; next pass
            old, self._pool = self._pool, None
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
        try:
            pool = self._new_pool()
        except OSError as exc:
            self._wedged = f"cannot start worker processes: {exc}"
            log.error("Processing is stopped: %s", self._wedged)
            return
        with self._lock:
            self._pool = pool
        self._pool_broken.clear()
        self._wedged = None
        log.warning("Processing worker pool rebuilt after a worker died")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work; running jobs get `timeout` seconds to publish, then their workers are killed.

        Nothing is lost either way: a killed job left only a staging folder (swept at start) and its study
        stays `processing` with its marker, so the next start processes it again.
        """
        stop_observer(self._observer)
        self._observer = None
        self._loop.stop()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        with self._lock:
            running = list(self._running.values())
        pool.shutdown(wait=False, cancel_futures=True)
        _done, pending = cf.wait(running, timeout=timeout)
        if pending:
            log.warning("Stopping with %d study job(s) still running: their workers are terminated", len(pending))
            if isinstance(pool, cf.ProcessPoolExecutor):
                adapters.terminate_workers(pool)
        pool.shutdown(wait=True)

    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    # ------------------------------------------------------------ dispatch

    def rescan(self) -> None:
        """Look at every marker (cheap: one small file per complete study), so a missed event costs nothing."""
        for marker in sorted(self.ready.glob("*.json")):
            self.poke(marker)

    def poke(self, marker: Path) -> None:
        if marker.parent != self.ready or marker.suffix != ".json" or marker.name.startswith("."):
            return
        study_uid = marker.stem
        if not is_storable_uid(study_uid):
            log.warning("Ignoring unexpected file in %s: %s", self.ready, marker.name)
            return
        try:
            payload = json.loads(marker.read_text(encoding="utf-8"))
            version = int(payload["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # vanished or being replaced; the rescan will see the final one
        with self._lock:
            if study_uid in self._running or self._pool is None or self._pool_broken.is_set():
                return
            job = self._claim(study_uid, version, payload)
            if job is None:
                return
            try:
                future = self._pool.submit(run_job, job)
            except BrokenProcessPool:
                state.requeue(self.store, study_uid)  # its marker stays: the rebuilt pool takes it
                self._pool_broken.set()
                self._loop.wake()
                return
            self._running[study_uid] = future
        # The folder name is built from PatientID, StudyDate and AccessionNumber: identifiers go to DEBUG only.
        log.info("Processing study %s version %d (%s)", study_uid, version, ", ".join(job.outputs))
        log.debug("Study %s version %d goes to outbox/%s", study_uid, version, job.folder)
        future.add_done_callback(functools.partial(self._finished, marker=marker))

    def _claim(self, study_uid: str, version: int, payload: dict[str, Any]) -> StudyJob | None:
        """complete -> processing for exactly this version, atomically; None when someone else has it or it is stale."""
        study = state.claimable(self.store, study_uid)
        if study is None:
            return None
        if study.state != StudyState.COMPLETE or study.version != version:
            if study.state in (StudyState.DONE, StudyState.FAILED) and study.version >= version:
                self._remove_marker(study_uid, version)
            return None
        attributes = {"PatientID": study.patient_id, "StudyDate": study.study_date, "AccessionNumber": study.accession}
        name = self._folder_for(study_uid, attributes)
        folder = state.claim(self.store, study_uid, version, name, disambiguate(name, study_uid))
        if folder is None:
            return None
        previous = study.outbox_path
        replaces = str(previous) if previous and previous != folder else None
        p = self.config.processing
        return StudyJob(
            study_uid=study_uid,
            version=version,
            may_be_incomplete=bool(payload.get("may_be_incomplete")),
            reason=str(payload.get("reason", "")),
            store_dir=str(self.store.paths.store),
            outbox_dir=str(self.config.paths.outbox),
            folder=folder,
            outputs=self._outputs_for(study_uid),
            nifti_options=self.config.nifti,
            qc=QcConfig.from_section(self.config.effective.get("qc", {})),
            workbook_headers=self.config.processing.workbook_headers,
            metadata_rows=self.config.processing.metadata_rows,
            templates_dir=str(p.templates_dir) if p.templates_dir else None,
            mr_clean_config=str(p.mr_clean_config) if p.mr_clean_config else None,
            replaces_folder=replaces,
        )

    def _folder_for(self, study_uid: str, attributes: dict[str, str | None]) -> str:
        """The study's outbox folder: its previous one while the identifiers give the same name, else the template
        name (identifiers corrected by a newest-wins re-send), disambiguated if another study has it."""
        name = folder_name(self.config.processing.folder_template, attributes, study_uid)
        previous = state.claimable(self.store, study_uid)
        if previous is not None and previous.outbox_path in (name, disambiguate(name, study_uid)):
            return str(previous.outbox_path)
        taken = state.folder_taken(self.store, name, study_uid)
        existing = self.config.paths.outbox / name / "manifest.json"
        foreign = False
        if existing.exists():
            try:
                foreign = json.loads(existing.read_text(encoding="utf-8")).get("study_uid") != study_uid
            except (OSError, ValueError):
                foreign = True
        reserved = name.lower() in RESERVED_FOLDERS
        return disambiguate(name, study_uid) if taken or foreign or reserved else name

    def _outputs_for(self, study_uid: str) -> tuple[str, ...]:
        """Outputs asked for by the requests that pulled this study, else the configured default."""
        wanted: set[str] = set()
        for raw in state.requested_outputs(self.store, study_uid):
            try:
                wanted.update(str(o) for o in json.loads(raw))
            except ValueError:
                continue
        if "excel_merged" in wanted:
            wanted.add("excel")  # the request's merged workbook is built from each study's
        chosen = [o for o in ALL_OUTPUTS if o in wanted] or list(self.config.processing.outputs)
        return tuple(chosen)

    def _finished(self, future: cf.Future[JobResult], *, marker: Path) -> None:
        study_uid = marker.stem
        try:
            result = future.result()
        except cf.CancelledError:
            with self._lock:
                self._running.pop(study_uid, None)
            return
        except BrokenProcessPool as exc:
            # The worker died (killed, out of memory): the pool is rebuilt by the dispatcher, and the study is
            # tried again until processing.max_attempts, then fails with the reason.
            with self._lock:
                self._running.pop(study_uid, None)
            self._pool_broken.set()
            self._worker_died(study_uid, marker, exc)
            self._loop.wake()
            return
        except Exception as exc:  # noqa: BLE001 - a failed future fails this study, not the node
            result = JobResult(study_uid, -1, "", False, f"worker crashed: {exc}")
        with self._lock:
            self._running.pop(study_uid, None)
        if result.ok:
            failpoints.hit(failpoints.STUDY_PUBLISHED)
            state.set_state(self.store, study_uid, StudyState.DONE, result.reason, outbox_path=result.folder)
            log.info(
                "Study %s version %d done in %.1fs%s",
                study_uid,
                result.version,
                result.seconds,
                f" ({len(result.warnings)} warning(s))" if result.warnings else "",
            )
            log.debug("Study %s published in outbox/%s", study_uid, result.folder)
        else:
            state.set_state(self.store, study_uid, StudyState.FAILED, result.reason)
            log.error("Study %s failed: %s", study_uid, result.reason)
        if self.metrics is not None:
            self.metrics.observe("dicomnode_processing_seconds", result.seconds)
        self._remove_marker(study_uid, result.version)

    def _worker_died(self, study_uid: str, marker: Path, exc: BaseException) -> None:
        attempts = state.attempts(self.store, study_uid)
        limit = self.config.processing.max_attempts
        if attempts < limit:
            state.requeue(self.store, study_uid)
            log.error("Study %s: its worker died (%s); attempt %d of %d, trying again", study_uid, exc, attempts, limit)
            return
        reason = (f"the worker processing it died {attempts} time(s) (killed, or out of memory: see "
                  f"processing.worker_memory_mb); processing.max_attempts={limit} reached")
        state.set_state(self.store, study_uid, StudyState.FAILED, reason)
        log.error("Study %s failed: %s", study_uid, reason)
        try:
            version = int(json.loads(marker.read_text(encoding="utf-8"))["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        self._remove_marker(study_uid, version)

    def _remove_marker(self, study_uid: str, version: int) -> None:
        marker = self.ready / f"{study_uid}.json"
        try:
            if int(json.loads(marker.read_text(encoding="utf-8"))["version"]) <= version:
                marker.unlink()
        except (OSError, ValueError, KeyError, TypeError):
            return

    # ------------------------------------------------------------ restart

    def _recover(self) -> None:
        """After a crash: a study left `processing` is done if its version was published, else processed again."""
        removed = sweep(self.config.paths.outbox)
        if removed:
            log.info("Removed %d unpublished staging folder(s) from the outbox", removed)
        for study in state.interrupted(self.store):
            study_uid, version = study.study_uid, study.version
            folder = study.outbox_path or self._folder_for(study_uid, {})
            manifest = self.config.paths.outbox / folder / "manifest.json"
            published = None
            if manifest.exists():
                try:
                    data = json.loads(manifest.read_text(encoding="utf-8"))
                    if data.get("study_uid") == study_uid:
                        published = int(data.get("version", -1))
                except (OSError, ValueError):
                    published = None
            if published == version:
                state.set_state(self.store, study_uid, StudyState.DONE, "published before restart", outbox_path=folder)
                self._remove_marker(study_uid, version)
                log.info("Study %s version %s was published before the restart: done", study_uid, version)
                continue
            state.requeue(self.store, study_uid)
            completion.write_marker(self.store, study_uid, version, study.may_be_incomplete, study.reason)
            log.info("Study %s version %s was interrupted by a restart: processing it again", study_uid, version)
        for study in state.awaiting_processing(self.store):
            # Decided complete, but the node died before its marker was written (the decision is committed
            # first): without a marker nothing would ever process it.
            if not completion.marker_for(self.store, study.study_uid, study.version):
                completion.write_marker(self.store, study.study_uid, study.version, study.may_be_incomplete,
                                        study.reason)
                log.info("Study %s version %s was complete without its marker: marker written", study.study_uid,
                         study.version)
