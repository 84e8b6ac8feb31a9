"""Soak: four DCMTK senders, random SIGKILLs of the daemon, request files dropped meanwhile against a real
Orthanc, and a data disk that fills past the guard and frees again. At the end nothing acknowledged is lost,
every request ended exactly once, and every study's outputs are whole. Bounded to about two minutes."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.store.store import dataset_sha256
from tests.support.storescu_log import acknowledged, dataset_bytes
from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, make_study, write_datasets
from toolkit.nodeproc import NodeProcess
from toolkit.peers import OrthancPeer, free_port, peer_env, storescu_command

pytestmark = [pytest.mark.e2e, pytest.mark.soak]

LOOPBACK = "127.0.0.1"
SENDERS = 4
KILLS = 4
CHAOS_S = 40.0
SEED = 20261203


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs for var/: small enough to fill past the disk guard on purpose (mount needs root)."""
    mount_point = tmp_path / "var-fs"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def db_rows(var: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(f"file:{var / 'node.db'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


class Sender(threading.Thread):
    """Sends one study a few files at a time through the whole chaos window, with storescu -v, again and again
    (the node dies under it, the disk guard refuses) until every file is acknowledged."""

    BATCH = 3
    PAUSE_S = 1.2

    def __init__(self, index: int, files: list[Path], port: int, logs: Path, deadline: float) -> None:
        super().__init__(name=f"sender{index}", daemon=True)
        self.index, self.files, self.port, self.logs, self.deadline = index, files, port, logs, deadline
        self.acked: set[str] = set()
        self.runs = 0
        self.failed_runs = 0

    def run(self) -> None:
        by_name = {str(p): p for p in self.files}
        while len(self.acked) < len(self.files) and time.monotonic() < self.deadline:
            todo = [p for p in self.files if str(p) not in self.acked][: self.BATCH]
            log = self.logs / f"sender{self.index}-{self.runs}.log"
            self.runs += 1
            with log.open("wb") as out:
                cmd = storescu_command(LOOPBACK, self.port, "DICOMNODE", todo, calling_ae=f"SOAK{self.index}",
                                       extra_args=["-v"])
                subprocess.run(cmd, env=peer_env(), stdout=subprocess.DEVNULL, stderr=out, timeout=120, check=False)
            ok, _ = acknowledged(log.read_text(errors="replace"))
            self.acked.update(str(by_name[name]) for name in ok)
            self.failed_runs += len(ok) < len(todo)
            # A refused or cut-off batch is tried again shortly; a whole one is followed by a pause, so the
            # study keeps arriving while the node is killed and the disk fills.
            time.sleep(0.3 if len(ok) < len(todo) else self.PAUSE_S)


def test_kills_full_disks_and_requests_meanwhile_lose_nothing_and_end_every_request_once(
    tmp_path: Path, small_fs: Path
) -> None:
    rng = random.Random(SEED)
    node_port = free_port()
    # The PACS: three studies to pull by accession, on a real Orthanc that can C-MOVE to the node.
    pulled = [StudySpec(patient_id=f"PULL{i}", accession=f"SOAKPULL{i}", series=[SeriesSpec(n_slices=15, rows=64, cols=64)])
              for i in range(3)]
    for i, spec in enumerate(pulled):
        write_datasets(make_study(spec), tmp_path / "pacs-files" / str(i))
    orthanc = OrthancPeer(tmp_path / "orthanc", ae_title="PACS", modalities={"node": ("DICOMNODE", LOOPBACK, node_port)})
    pushed = [StudySpec(patient_id=f"PUSH{i}", accession=f"SOAKPUSH{i}",
                        series=[SeriesSpec(n_slices=60, rows=64, cols=64, series_number=1),
                                SeriesSpec(n_slices=30, rows=64, cols=64, series_number=2)]) for i in range(SENDERS)]
    sources = [sorted(write_datasets(make_study(spec), tmp_path / f"push{i}")) for i, spec in enumerate(pushed)]
    with orthanc:
        orthanc.load([tmp_path / "pacs-files"])
        node = NodeProcess(
            tmp_path / "node",
            node={"port": node_port, "drain_timeout_s": 2},
            paths={"var": str(small_fs / "var")},
            peers={"pacs": {"ae_title": "PACS", "host": LOOPBACK, "port": orthanc.dicom_port, "timeout_s": 10,
                            "dimse_timeout_s": 30}},
            completion={"stable_age_s": 2, "check_interval_s": 0.2},
            storage={"disk_high_water_pct": 80, "disk_low_water_pct": 70, "disk_check_interval_s": 0.2},
            requests={"settle_s": 0.2, "rescan_interval_s": 1, "backoff_base_s": 0.5, "backoff_max_s": 2,
                      "max_attempts": 50},
            processing={"outputs": ["excel"], "rescan_interval_s": 0.5},
        )
        node.start()
        inbox = Path(node.data["paths"]["inbox"])
        outbox = Path(node.data["paths"]["outbox"])
        logs = tmp_path / "logs"
        logs.mkdir()
        deadline = time.monotonic() + 180
        senders = [Sender(i, files, node_port, logs, deadline) for i, files in enumerate(sources)]
        for s in senders:
            s.start()

        # Chaos: SIGKILLs at random moments, request files dropped in between, the disk filled and freed.
        dropped: list[str] = []
        ballast = small_fs / "ballast"
        chaos_end = time.monotonic() + CHAOS_S
        kill_at = sorted(rng.uniform(3, CHAOS_S - 3) for _ in range(KILLS))
        fill_at, free_at = CHAOS_S * 0.3, CHAOS_S * 0.55
        drop_at = [CHAOS_S * f for f in (0.1, 0.4, 0.7)]
        started = time.monotonic()
        filled = freed = False
        while time.monotonic() < chaos_end:
            t = time.monotonic() - started
            if kill_at and t >= kill_at[0]:
                kill_at.pop(0)
                node.kill()
                time.sleep(rng.uniform(0.1, 1.0))
                node.restart(timeout=60)
            if drop_at and t >= drop_at[0]:
                drop_at.pop(0)
                name = f"soak{len(dropped)}"
                tmp = inbox / f".{name}.part"
                tmp.write_text(f"studies:\n  - accession: {pulled[len(dropped)].accession}\noutputs: [excel]\n")
                tmp.rename(inbox / f"{name}.yaml")
                dropped.append(name)
            if not filled and t >= fill_at:
                total, used, _ = shutil.disk_usage(small_fs)
                with ballast.open("wb") as fh:  # past the 80% high-water mark: C-STOREs answer 0xA700
                    fh.truncate(0)
                    fh.write(b"\0" * max(0, int(total * 0.85) - used))
                filled = True
            if filled and not freed and t >= free_at:
                ballast.unlink()
                freed = True
            time.sleep(0.05)
        assert filled and freed and not kill_at and len(dropped) == 3

        # Calm: everything must converge.
        for s in senders:
            s.join(timeout=max(1.0, deadline - time.monotonic()))
        for s in senders:
            assert len(s.acked) == len(s.files), f"sender {s.index}: {len(s.acked)}/{len(s.files)} after {s.runs} runs"
        assert sum(s.failed_runs for s in senders) > 0, "no sender was ever interrupted: the soak tested nothing"

        def finished() -> bool:
            states: dict[object, object] = dict(db_rows(node.var, "SELECT name, state FROM requests"))  # type: ignore[arg-type]
            return len(states) == 3 and all(v in ("done", "failed") for v in states.values())

        wait_for(finished, max(10.0, deadline - time.monotonic()), "every request to end")
        all_studies = [*pushed, *pulled]

        problems: list[str] = []

        def outputs_whole() -> bool:
            problems.clear()
            for spec in all_studies:
                row = db_rows(node.var, "SELECT state, outbox_path, n_instances, version, reason FROM studies"
                                        f" WHERE study_uid='{spec.study_uid}'")
                if not row or row[0][0] != "done" or not row[0][1]:
                    problems.append(f"{spec.patient_id}: {row}")
                    continue
                manifest = outbox / str(row[0][1]) / "manifest.json"
                expected = sum(s.n_slices for s in spec.series)
                if not manifest.exists() or json.loads(manifest.read_text())["inputs"]["instances"] != expected:
                    problems.append(f"{spec.patient_id}: {row}, manifest {manifest.exists()}")
            return not problems

        try:
            wait_for(outputs_whole, max(10.0, deadline - time.monotonic()), "every study processed whole")
        except AssertionError:
            raise AssertionError(f"studies not whole: {problems}\n{node.log()[-6000:]}") from None
        node.stop()

    # Nothing acknowledged is lost or damaged.
    stored = {p.stem: p for p in (small_fs / "var" / "store").rglob("*.dcm")}
    for sender in senders:
        for name in sender.acked:
            sent = Path(name)
            assert sent.stem in stored, f"acknowledged {sent.stem} lost"
            assert dataset_bytes(stored[sent.stem]) == dataset_bytes(sent), f"acknowledged {sent.stem} damaged"
    for sop, rel, sha in db_rows(small_fs / "var", "SELECT sop_uid, path, sha256 FROM instances"):
        assert dataset_sha256(small_fs / "var" / str(rel)) == sha, f"index row of {sop} does not match its file"
    # Every request ended exactly once: one row each, done, its file in inbox/done once, nothing left behind.
    rows = db_rows(small_fs / "var", "SELECT name, state, file_location FROM requests ORDER BY name")
    assert rows == [(name, "done", "done") for name in dropped], rows
    assert sorted(p.name for p in (inbox / "done").iterdir()) == sorted(f"{n}.yaml" for n in dropped)
    assert [p for p in inbox.iterdir() if p.is_file()] == []
    assert list((inbox / "active").iterdir()) == [] and list((inbox / "failed").iterdir()) == []
    for name in dropped:
        status = (outbox / "requests" / f"{name}.status.yaml").read_text()
        assert "state: done" in status
    # Whole outputs: no manifest says it may be incomplete, and each study has one folder.
    manifests = [json.loads(m.read_text()) for m in outbox.glob("*/manifest.json")]
    assert sorted(m["study_uid"] for m in manifests) == sorted(s.study_uid for s in all_studies)
    assert not any(m["may_be_incomplete"] for m in manifests)
