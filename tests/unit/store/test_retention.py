"""Unit tests of retention: store purge per policy and state, outbox trimming by size and age, what is never touched."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import Paths, RetentionConfig
from node.process import completion
from node.process.completion import CompletionConfig, CompletionMonitor
from node.store.retention import Retention
from node.store.state import StudyState
from node.store.store import Origin, Store
from toolkit.dicomgen import multi_series_study, write_study

DAY = 86400.0
ORIGIN = Origin(calling_ae="UNITTEST", peer_ip="127.0.0.1", assoc_id="")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(Paths(inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", var=tmp_path / "var"))
    s.paths.outbox.mkdir(parents=True, exist_ok=True)
    yield s
    s.close()


def ingest_study(store: Store, folder: Path, n_slices: int = 3) -> tuple[str, list[Path]]:
    files = write_study(multi_series_study(n_series=1, n_slices=n_slices), folder)
    for f in files:
        tmp = store.new_temp_path()
        tmp.write_bytes(f.read_bytes())
        store.ingest(tmp, ORIGIN)
    study_uid = store.query("SELECT study_uid FROM instances WHERE path LIKE ?", (f"%{files[0].stem}%",))[0][0]
    return str(study_uid), files


def set_study(store: Store, study_uid: str, state: StudyState, changed: float, folder: str | None = "OUT") -> None:
    with store.transaction() as db:
        db.execute(
            "UPDATE studies SET state=?, state_changed=?, outbox_path=?, snapshot_received=last_received WHERE study_uid=?",
            (state, changed, folder, study_uid),
        )


def stored_files(store: Store, study_uid: str) -> list[Path]:
    return sorted((store.paths.store / study_uid).rglob("*.dcm"))


def retention(node_store: Store, **cfg: object) -> Retention:
    return Retention(node_store, node_store.paths.outbox, RetentionConfig(**cfg))  # type: ignore[arg-type]


def test_delete_when_done_removes_files_and_instance_rows_but_keeps_the_done_study_row(store: Store, tmp_path: Path) -> None:
    study_uid, _ = ingest_study(store, tmp_path / "a")
    set_study(store, study_uid, StudyState.DONE, time.time())
    assert len(stored_files(store, study_uid)) == 3

    result = retention(store, store="delete_when_done").run_once()

    assert (result.studies_purged, result.instances_deleted) == (1, 3)
    assert stored_files(store, study_uid) == []
    assert store.instance_count(study_uid) == 0
    row = store.study(study_uid)
    assert row is not None and row["state"] == StudyState.DONE and row["n_instances"] == 0 and row["store_purged"]


def test_keep_never_deletes_anything(store: Store, tmp_path: Path) -> None:
    study_uid, _ = ingest_study(store, tmp_path / "a")
    set_study(store, study_uid, StudyState.DONE, time.time() - 1000 * DAY)

    result = retention(store, store="keep").run_once()

    assert result.studies_purged == 0 and len(stored_files(store, study_uid)) == 3


def test_delete_after_days_waits_until_the_study_has_been_done_that_long(store: Store, tmp_path: Path) -> None:
    study_uid, _ = ingest_study(store, tmp_path / "a")
    now = time.time()
    set_study(store, study_uid, StudyState.DONE, now - 9 * DAY)
    r = retention(store, store="delete_after_days", store_days=10)

    assert r.run_once(now=now).studies_purged == 0
    assert len(stored_files(store, study_uid)) == 3
    assert r.run_once(now=now + 1.5 * DAY).studies_purged == 1
    assert stored_files(store, study_uid) == []


@pytest.mark.parametrize(
    "state", [StudyState.RECEIVING, StudyState.COMPLETE, StudyState.PROCESSING, StudyState.REOPENED, StudyState.FAILED]
)
def test_studies_that_are_not_done_keep_their_dicom(store: Store, tmp_path: Path, state: StudyState) -> None:
    study_uid, _ = ingest_study(store, tmp_path / "a")
    set_study(store, study_uid, state, time.time() - 100 * DAY)

    assert retention(store, store="delete_when_done").run_once().studies_purged == 0
    assert len(stored_files(store, study_uid)) == 3


def test_a_done_study_that_was_never_published_or_has_late_instances_keeps_its_dicom(store: Store, tmp_path: Path) -> None:
    unpublished, _ = ingest_study(store, tmp_path / "a")
    set_study(store, unpublished, StudyState.DONE, time.time(), folder=None)
    late, _ = ingest_study(store, tmp_path / "b")
    set_study(store, late, StudyState.DONE, time.time())
    with store.transaction() as db:
        db.execute("UPDATE studies SET last_received=snapshot_received+5 WHERE study_uid=?", (late,))

    assert retention(store, store="delete_when_done").run_once().studies_purged == 0
    assert len(stored_files(store, unpublished)) == 3 and len(stored_files(store, late)) == 3


def test_a_re_send_after_the_purge_recreates_the_instances_and_reopens_the_study(store: Store, tmp_path: Path) -> None:
    study_uid, files = ingest_study(store, tmp_path / "a")
    set_study(store, study_uid, StudyState.DONE, time.time() - 10)
    retention(store, store="delete_when_done").run_once()

    for f in files:
        tmp = store.new_temp_path()
        tmp.write_bytes(f.read_bytes())
        result = store.ingest(tmp, ORIGIN)
        assert not result.duplicate
    CompletionMonitor(store, CompletionConfig(stable_age_s=3600)).tick()

    assert store.instance_count(study_uid) == 3 and len(stored_files(store, study_uid)) == 3
    row = store.study(study_uid)
    assert row is not None and row["state"] == StudyState.REOPENED and row["n_instances"] == 3


def publish_folder(outbox: Path, name: str, study_uid: str, age_days: float, size: int, now: float) -> Path:
    folder = outbox / name
    (folder / "nifti").mkdir(parents=True)
    (folder / "nifti" / "vol.nii.gz").write_bytes(b"\x01" * size)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"study_uid": study_uid, "version": 1}), encoding="utf-8")
    os.utime(manifest, (now - age_days * DAY, now - age_days * DAY))
    return folder


def test_outbox_age_cap_removes_only_study_folders_older_than_the_limit(store: Store) -> None:
    now = time.time()
    out = store.paths.outbox
    old = publish_folder(out, "old", "1.2.3.1", 40, 1000, now)
    young = publish_folder(out, "young", "1.2.3.2", 5, 1000, now)

    result = retention(store, outbox_max_age_days=30).run_once(now=now)

    assert result.folders_removed == 1 and not old.exists() and young.exists()
    assert sorted(p.name for p in out.iterdir()) == ["young"]


def test_outbox_size_cap_removes_the_oldest_folders_first_until_it_fits(store: Store) -> None:
    now = time.time()
    out = store.paths.outbox
    folders = [publish_folder(out, f"s{i}", f"1.2.3.{i}", 10 - i, 400_000, now) for i in range(5)]  # s0 oldest

    result = retention(store, outbox_max_gb=0.0013).run_once(now=now)  # 1.3 MB: three of five fit

    assert result.folders_removed == 2
    assert [f.exists() for f in folders] == [False, False, True, True, True]


def test_outbox_cleanup_never_touches_staging_folders_processing_studies_or_foreign_folders(store: Store, tmp_path: Path) -> None:
    now = time.time()
    out = store.paths.outbox
    busy_uid, _ = ingest_study(store, tmp_path / "a", n_slices=1)
    set_study(store, busy_uid, StudyState.PROCESSING, now, folder="busy")
    busy = publish_folder(out, "busy", busy_uid, 100, 10, now)
    staging = publish_folder(out, ".tmp-1.2.3-v2-99", "1.2.3.9", 100, 10, now)
    foreign = out / "notes-from-a-user"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine", encoding="utf-8")
    os.utime(foreign, (now - 100 * DAY, now - 100 * DAY))
    removable = publish_folder(out, "done-study", "1.2.3.10", 100, 10, now)

    result = retention(store, outbox_max_age_days=1, outbox_max_gb=0.000001).run_once(now=now)

    assert result.folders_removed == 1 and not removable.exists()
    assert busy.exists() and staging.exists() and foreign.exists()


def test_a_late_instance_after_the_purge_keeps_the_complete_outputs_instead_of_rebuilding_from_less(
    store: Store, tmp_path: Path
) -> None:
    study_uid, files = ingest_study(store, tmp_path / "a", n_slices=10)
    assert completion.mark_complete(store, study_uid, "test") == 1
    set_study(store, study_uid, StudyState.DONE, time.time() - 10)
    (store.paths.var / "ready" / f"{study_uid}.json").unlink()  # what the processor does once it is done
    retention(store, store="delete_when_done").run_once()
    assert store.instance_count(study_uid) == 0

    late = store.new_temp_path()
    late.write_bytes(files[0].read_bytes())
    store.ingest(late, ORIGIN)
    monitor = CompletionMonitor(store, CompletionConfig(stable_age_s=3600))
    monitor.tick()
    row = store.study(study_uid)
    assert row is not None and row["state"] == StudyState.DONE and row["version"] == 1
    assert "outputs of version 1 (10 instances) are kept" in row["reason"]
    assert not (store.paths.var / "ready" / f"{study_uid}.json").exists()
    monitor.tick()  # said once, not again at every pass
    assert store.study(study_uid)["state"] == StudyState.DONE  # type: ignore[index]
