"""Processing workers die with the node, however it dies: a SIGKILLed daemon leaves no worker or helper behind."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, write_study
from toolkit.nodeproc import NodeProcess
from toolkit.peers import storescu

pytestmark = pytest.mark.integration


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def workers_of(pid: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "multiprocessing" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("moment", ["while a worker starts", "once the workers are idle"])
def test_a_sigkilled_node_leaves_no_processing_worker_behind(tmp_path: Path, moment: str) -> None:
    node = NodeProcess(tmp_path / "node", completion={"stable_age_s": 0.3, "check_interval_s": 0.1},
                       processing={"workers": 2, "rescan_interval_s": 0.2})
    node.start()
    try:
        study = StudySpec(series=[SeriesSpec(n_slices=120, rows=256, cols=256)])
        storescu("127.0.0.1", node.port, "DICOMNODE", write_study(study, tmp_path / "study"))
        assert node.proc is not None
        pid = node.proc.pid
        if moment == "while a worker starts":
            # The earliest moment: a worker process exists (spawned), its initialiser may not have run yet.
            procs = wait_for(lambda: workers_of(pid), 60, "a spawned worker")
        else:
            outbox = Path(node.data["paths"]["outbox"])
            wait_for(lambda: list(outbox.glob("*/manifest.json")), 120, "the study's outputs")
            procs = workers_of(pid)
        node.signal(signal.SIGKILL)
        node.wait(30)
        assert procs
        wait_for(lambda: not alive(procs), 30, "the workers and their helpers to exit after the node's death")
    finally:
        for p in alive(workers_of(node.proc.pid) if node.proc and node.proc.poll() is None else []):
            p.kill()
        node.kill()
