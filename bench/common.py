"""Shared bench helpers: synthetic input files, the dicom-node subprocess, peak-RSS sampling."""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import psutil

from toolkit.dicomgen import SeriesSpec, StudySpec, make_study, write_datasets
from toolkit.peers import LOOPBACK, echoscu, free_port, peer_env, wait_for_port

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent


def make_mr_files(folder: Path, n: int, rows: int = 116, per_series: int = 100) -> list[Path]:
    """n MR slices (116x116 x 16 bit: about 28 kB per file), split into series of per_series slices."""
    n_series = max(1, math.ceil(n / per_series))
    series = [
        SeriesSpec(
            modality="MR",
            n_slices=min(per_series, n - i * per_series),
            rows=rows,
            cols=rows,
            series_number=i + 1,
            series_description=f"bench_{i + 1}",
        )
        for i in range(n_series)
    ]
    study = StudySpec(patient_id="BENCH", accession="BENCH0001", series=series)
    return write_datasets(make_study(study), folder)


class RssSampler:
    """Peak resident memory (and CPU seconds used so far) of a process and its children, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
            total = 0
            cpu = 0.0
            for p in procs:
                try:
                    total += p.memory_info().rss
                    times = p.cpu_times()
                    cpu += times.user + times.system
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self.cpu_seconds = max(self.cpu_seconds, cpu)
        except psutil.Error:
            return

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()
        return self.peak


class NodeProcess:
    """dicom-node started as `python daemon.py --config <workdir>/node.yaml` from the repo root."""

    def __init__(self, workdir: Path, ae_title: str = "DICOMNODE", nodelay_env: bool = False,
                 receiver_processes: int = 1) -> None:
        self.workdir = workdir
        self.receiver_processes = receiver_processes
        self.ae_title = ae_title
        self.host = LOOPBACK
        self.port = free_port()
        self.config_path = workdir / "node.yaml"
        self.log_path = workdir / "node.log"
        self.nodelay_env = nodelay_env
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        for sub in ("inbox", "outbox", "var"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        pacs_port = free_port()
        self.config_path.write_text(
            f"node:   {{ae_title: {self.ae_title}, bind: {LOOPBACK}, port: {self.port}, "
            f"receiver_processes: {self.receiver_processes}}}\n"
            f"paths:  {{inbox: {self.workdir / 'inbox'}, outbox: {self.workdir / 'outbox'}, "
            f"var: {self.workdir / 'var'}}}\n"
            f"peers:  {{pacs: {{ae_title: PACS, host: {LOOPBACK}, port: {pacs_port}}}}}\n"
        )

    def start(self, timeout: float = 60.0) -> NodeProcess:
        daemon = REPO / "daemon.py"
        if not daemon.is_file():
            raise FileNotFoundError(f"{daemon} does not exist yet: run with --only storescp,orthanc")
        self.write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(daemon), "--config", str(self.config_path)],
                cwd=REPO,
                env=peer_env(self.nodelay_env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_for_port(self.host, self.port, timeout, proc=self.proc)
            deadline = time.monotonic() + timeout
            while not echoscu(self.host, self.port, self.ae_title):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"dicom-node does not answer C-ECHO; log:\n{self.log_tail()}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait for exit; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("dicom-node ignored SIGTERM for %s s; killing it", timeout)
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        code = self.proc.returncode
        self.proc = None
        return code

    def stored_files(self) -> int:
        return sum(1 for p in (self.workdir / "var").rglob("*.dcm") if p.is_file())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
