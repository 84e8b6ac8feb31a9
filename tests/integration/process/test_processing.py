"""Completion and processing end to end: bursts, reopened studies, crash during processing, hard cap, open associations."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, make_study, multi_series_study, write_datasets, write_study
from toolkit.nodeproc import NodeProcess
from toolkit.peers import storescu

LOOPBACK = "127.0.0.1"


def published(outbox: Path) -> list[Path]:
    """Study folders (outbox/requests/ holds request status files, not a study)."""
    return sorted(d for d in outbox.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name != "requests")


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def study_state(node, study_uid: str) -> str | None:
    row = node.store.query("SELECT state FROM studies WHERE study_uid=?", (study_uid,))
    return row[0][0] if row else None


class FolderWatcher(threading.Thread):
    """Looks at the outbox as a consumer would, as fast as it can, and records anything half-written."""

    def __init__(self, outbox: Path) -> None:
        super().__init__(daemon=True)
        self.outbox = outbox
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.looks = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for folder in published(self.outbox):
                self.looks += 1
                try:
                    data = manifest(folder)
                except FileNotFoundError:
                    self.problems.append(f"{folder.name}: no manifest.json")
                    continue
                except (ValueError, OSError) as exc:
                    self.problems.append(f"{folder.name}: unreadable manifest: {exc}")
                    continue
                for entry in data["outputs"]:
                    if not (folder / entry["path"]).exists():
                        self.problems.append(f"{folder.name}: {entry['path']} listed but missing")


def test_two_close_bursts_make_one_version_and_a_late_burst_replaces_it_atomically(start_node, tmp_path):
    # stable_age_s leaves a loaded CI machine ample time between the two close bursts.
    node = start_node(completion={"stable_age_s": 5, "check_interval_s": 0.2})
    port = node.config.node.port
    study = multi_series_study(n_series=3, n_slices=8)
    datasets = make_study(study)
    first, second, late = datasets[:12], datasets[12:16], datasets[16:]
    outbox = node.config.paths.outbox
    watcher = FolderWatcher(outbox)
    watcher.start()
    try:
        storescu(LOOPBACK, port, "DICOMNODE", write_datasets(first, tmp_path / "b1"))
        storescu(LOOPBACK, port, "DICOMNODE", write_datasets(second, tmp_path / "b2"))
        wait_for(lambda: study_state(node, study.study_uid) == "done", what="version 1 done")
        (folder,) = published(outbox)
        v1 = manifest(folder)
        assert v1["version"] == 1 and v1["inputs"]["instances"] == 16
        assert not v1["may_be_incomplete"]

        storescu(LOOPBACK, port, "DICOMNODE", write_datasets(late, tmp_path / "b3"))
        wait_for(lambda: (published(outbox) and manifest(published(outbox)[0])["version"] == 2), what="version 2")
        (folder2,) = published(outbox)
        assert folder2 == folder
        v2 = manifest(folder2)
        assert v2["inputs"]["instances"] == 24
        assert len(v2["inputs"]["series"]) == 3
        assert {p.name for p in (folder2 / "nifti").glob("*.nii.gz")} >= {
            p.name for p in (folder / "nifti").glob("*.nii.gz")
        }
        for entry in v2["outputs"]:
            from node.store.store import file_sha256

            assert file_sha256(folder2 / entry["path"]) == entry["sha256"]
        assert not [d for d in outbox.iterdir() if d.name.startswith(".")]
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.looks > 0
    assert watcher.problems == []
    # The folder is published before the study's state says done (a crash in between is repaired at start).
    wait_for(lambda: node.store.query("SELECT version, state FROM studies WHERE study_uid=?", (study.study_uid,))
             == [(2, "done")], timeout=30, what="version 2 done")


def test_a_node_killed_while_processing_processes_the_study_exactly_once_after_restart(tmp_path):
    study = StudySpec(series=[SeriesSpec(n_slices=80, rows=192, cols=192, series_number=i + 1) for i in range(4)])
    write_study(study, tmp_path / "src")
    sections = {"completion": {"stable_age_s": 1, "check_interval_s": 0.2}}
    node = NodeProcess(tmp_path / "node", **sections)
    node.start()
    try:
        storescu(LOOPBACK, node.port, "DICOMNODE", [tmp_path / "src"])
        wait_for(lambda: "Processing study" in node.log(), what="processing to start")
        node.kill()
        first_log = node.log()
        restarted = node.restart()  # same config, ports, paths and database
        outbox = Path(node.data["paths"]["outbox"])
        wait_for(lambda: published(outbox) and "done" in restarted.log(), what="done after restart")
        (folder,) = published(outbox)
        assert manifest(folder)["version"] == 1
        assert manifest(folder)["inputs"]["instances"] == 320
        restarted.stop()
        full_log = restarted.log()
        new_part = full_log[len(first_log) :]
        publications = new_part.count("version 1 done in") + first_log.count("version 1 done in")
        recovered = "published before the restart" in new_part
        assert publications + int(recovered) == 1, new_part
        assert not [d for d in outbox.iterdir() if d.name.startswith(".")]
    finally:
        node.kill()


def _open_association_with(port: int, datasets):
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate(LOOPBACK, port, ae_title="DICOMNODE")
    assert assoc.is_established
    for ds in datasets:
        status = assoc.send_c_store(ds)
        assert status.Status == 0x0000
    return assoc


def _as_sent(paths):
    return [dcmread(p) for p in paths]


def test_an_open_association_keeps_a_study_from_completing_until_it_closes(start_node, tmp_path):
    node = start_node(completion={"stable_age_s": 0.5, "check_interval_s": 0.1})
    study = StudySpec(series=[SeriesSpec(n_slices=3)])
    assoc = _open_association_with(node.config.node.port, _as_sent(write_study(study, tmp_path / "src")))
    try:
        # Well past stable_age_s with the association still open: the study must still be receiving.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert study_state(node, study.study_uid) == "receiving"
            time.sleep(0.1)
    finally:
        assoc.release()
    wait_for(lambda: study_state(node, study.study_uid) == "done", what="done after release")
    (folder,) = published(node.config.paths.outbox)
    assert manifest(folder)["may_be_incomplete"] is False


def test_the_hard_cap_processes_an_unfinished_study_and_flags_it(start_node, tmp_path):
    node = start_node(completion={"stable_age_s": 600, "max_wait_s": 2, "on_max_wait": "process", "check_interval_s": 0.1})
    study = StudySpec(series=[SeriesSpec(n_slices=3)])
    assoc = _open_association_with(node.config.node.port, _as_sent(write_study(study, tmp_path / "src")))
    try:
        wait_for(lambda: study_state(node, study.study_uid) == "done", what="hard cap")
        (folder,) = published(node.config.paths.outbox)
        data = manifest(folder)
        assert data["may_be_incomplete"] is True
        assert data["warnings"][0].startswith("MAY_BE_INCOMPLETE: hard cap")
    finally:
        assoc.release()


def test_the_hard_cap_can_discard_instead(start_node, tmp_path):
    node = start_node(completion={"stable_age_s": 600, "max_wait_s": 1, "on_max_wait": "discard", "check_interval_s": 0.1})
    study = StudySpec(series=[SeriesSpec(n_slices=2)])
    storescu(LOOPBACK, node.config.node.port, "DICOMNODE", write_study(study, tmp_path / "src"))
    wait_for(lambda: study_state(node, study.study_uid) == "discarded", what="discarded")
    assert published(node.config.paths.outbox) == []


def test_a_study_that_cannot_be_processed_fails_with_a_reason_and_the_node_goes_on(start_node, tmp_path):
    from node.process import completion
    from node.store import state

    node = start_node(completion={"stable_age_s": 0.5, "check_interval_s": 0.1})
    ghost = "1.2.3.4.5.6.7.8.9"
    now = time.time()
    with node.store.transaction() as db:  # a study the index knows but whose files are gone
        db.execute(
            "INSERT INTO studies(study_uid, first_received, last_received, n_instances, state, state_changed)"
            " VALUES (?,?,?,?,?,?)",
            (ghost, now, now, 1, "receiving", now),
        )
    state.claim_pull(node.store, ghost, "test")  # keep the idle rule away; we complete it ourselves
    assert completion.mark_complete(node.store, ghost, "test") == 1
    wait_for(lambda: study_state(node, ghost) == "failed", what="failed")
    (reason,) = node.store.query("SELECT reason FROM studies WHERE study_uid=?", (ghost,))[0]
    assert "no instances on disk" in reason
    other = StudySpec(series=[SeriesSpec(n_slices=2)], accession="ACC0002", patient_id="SYN0002")
    storescu(LOOPBACK, node.config.node.port, "DICOMNODE", write_study(other, tmp_path / "src2"))
    wait_for(lambda: study_state(node, other.study_uid) == "done", what="the next study still processed")
    assert not (node.config.paths.var / "ready" / f"{ghost}.json").exists()


def test_a_study_with_legacy_uids_from_dcmtk_is_stored_processed_and_flagged(start_node, tmp_path):
    # Pre-standard equipment: components with leading zeros. Refused, such a study never completes a pull.
    node = start_node(completion={"stable_age_s": 0.5, "check_interval_s": 0.1})
    study = StudySpec(study_uid="1.2.840.0113654.2.70.1.0042",
                      series=[SeriesSpec(n_slices=3, series_uid="1.2.840.0113654.2.70.1.0042.01")])
    datasets = make_study(study)
    for i, ds in enumerate(datasets):
        ds.SOPInstanceUID = f"1.2.840.0113654.2.70.1.0042.01.00{i + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    storescu(LOOPBACK, node.config.node.port, "DICOMNODE", write_datasets(datasets, tmp_path / "src"))
    wait_for(lambda: study_state(node, study.study_uid) == "done", what="the legacy study processed")
    (folder,) = published(node.config.paths.outbox)
    data = manifest(folder)
    assert data["study_uid"] == study.study_uid
    assert data["inputs"]["instances"] == 3
    assert set(data["legacy_uids"]) == {study.study_uid, study.series[0].series_uid,
                                        *(ds.SOPInstanceUID for ds in datasets)}
    assert any(w.startswith("LEGACY_UIDS: 5 UID(s)") for w in data["warnings"])
    assert node.store.query("SELECT COUNT(*) FROM quarantine") == [(0,)]


def _corrected_resend(node, sent, tmp_path):
    """The PACS corrects the patient ID and sends the whole study again (same UIDs, other content)."""
    datasets = _as_sent(sent)
    for ds in datasets:
        ds.PatientID = "CORRECTED01"
    storescu(LOOPBACK, node.config.node.port, "DICOMNODE", write_datasets(datasets, tmp_path / "corrected"))


def test_newest_wins_reprocesses_a_corrected_study_under_its_corrected_name(start_node, tmp_path):
    node = start_node(completion={"stable_age_s": 0.5, "check_interval_s": 0.1}, storage={"on_conflict": "newest_wins"})
    study = StudySpec(patient_id="WRONG01", series=[SeriesSpec(n_slices=3)])
    sent = write_study(study, tmp_path / "src")
    storescu(LOOPBACK, node.config.node.port, "DICOMNODE", sent)
    wait_for(lambda: study_state(node, study.study_uid) == "done", what="version 1")
    (first,) = published(node.config.paths.outbox)
    assert first.name.startswith("WRONG01_")
    _corrected_resend(node, sent, tmp_path)
    wait_for(lambda: (f := published(node.config.paths.outbox)) and f[0].name.startswith("CORRECTED01_")
             and manifest(f[0])["version"] == 2 and study_state(node, study.study_uid) == "done", what="version 2",
             timeout=60)
    (second,) = published(node.config.paths.outbox)  # the old name is gone: no stale outputs under it
    assert manifest(second)["study_uid"] == study.study_uid
    assert {dcmread(p).PatientID for p in (node.config.paths.var / "store").rglob("*.dcm")} == {"CORRECTED01"}
    assert len(list((node.config.paths.var / "conflicts").rglob("*.dcm"))) == 3


def test_keep_first_keeps_the_first_copy_and_its_outputs(start_node, tmp_path):
    node = start_node(completion={"stable_age_s": 0.5, "check_interval_s": 0.1})
    study = StudySpec(patient_id="WRONG01", series=[SeriesSpec(n_slices=3)])
    sent = write_study(study, tmp_path / "src")
    storescu(LOOPBACK, node.config.node.port, "DICOMNODE", sent)
    wait_for(lambda: study_state(node, study.study_uid) == "done", what="version 1")
    _corrected_resend(node, sent, tmp_path)
    wait_for(lambda: node.store.query("SELECT COUNT(*) FROM conflicts") == [(3,)], what="three conflicts recorded", timeout=30)
    (folder,) = published(node.config.paths.outbox)
    assert folder.name.startswith("WRONG01_") and manifest(folder)["version"] == 1
    assert {dcmread(p).PatientID for p in (node.config.paths.var / "store").rglob("*.dcm")} == {"WRONG01"}
    assert study_state(node, study.study_uid) == "done"
