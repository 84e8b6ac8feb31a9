"""Unit tests of the on-disk store: layout, durability order, dedupe, conflicts, quarantine, truncation, temp sweep."""

from __future__ import annotations

import os
import struct
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

from node.config import Paths
from node.dicom.validators import is_valid_uid
from node.store.store import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_INVALID_UIDS,
    STATUS_STORE_FAILED,
    STATUS_UID_MISMATCH,
    Origin,
    Store,
    StoreError,
    dataset_offset,
    dataset_sha256,
)
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series

MIB = 1 << 20
ORIGIN = Origin(calling_ae="UNITTEST", peer_ip="127.0.0.1", assoc_id="a1")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(Paths(inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", var=tmp_path / "var"))
    yield s
    s.close()


def make_ds(**attrs: Any) -> Dataset:
    study = StudySpec()
    (ds,) = make_series(study, SeriesSpec(n_slices=1))
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def write_temp(store: Store, ds: Dataset) -> Path:
    """Write ds as the SCP's receive path does: a Part 10 file in var/tmp."""
    path = store.new_temp_path()
    ds.save_as(path, enforce_file_format=True)
    return path


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def quarantined(store: Store) -> list[tuple[Path, str]]:
    """(dataset file, reason text) pairs in var/quarantine."""
    q = store.paths.quarantine
    return [(p, p.with_suffix(".reason.txt").read_text(encoding="utf-8")) for p in sorted(q.glob("*.dcm"))]


def test_an_instance_is_stored_under_its_study_series_and_sop_uids_and_indexed(store: Store) -> None:
    ds = make_ds()
    tmp = write_temp(store, ds)
    sent = tmp.read_bytes()
    result = store.ingest(tmp, ORIGIN, expected_sop_uid=ds.SOPInstanceUID, expected_sop_class=ds.SOPClassUID)
    expected = store.paths.store / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert result.path == expected
    assert expected.read_bytes() == sent
    assert not tmp.exists()
    assert files_under(store.paths.tmp) == []
    assert store.instance_count(ds.StudyInstanceUID) == 1
    rows = store.query("SELECT path, calling_ae, peer_ip, assoc_id FROM instances")
    assert rows == [(str(expected.relative_to(store.paths.var)), "UNITTEST", "127.0.0.1", "a1")]
    study = store.study(ds.StudyInstanceUID)
    assert study is not None
    assert (study["n_instances"], study["patient_id"], study["open_deliveries"]) == (1, "SYN0001", 1)


def test_the_same_instance_with_identical_content_is_idempotent(store: Store) -> None:
    ds = make_ds()
    first = store.ingest(write_temp(store, ds), ORIGIN)
    second = store.ingest(write_temp(store, ds), ORIGIN)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.path == first.path
    assert files_under(store.paths.store) == [first.path]
    assert files_under(store.paths.tmp) == []
    assert store.instance_count() == 1
    study = store.study(ds.StudyInstanceUID)
    assert study is not None and study["n_instances"] == 1
    assert store.query("SELECT COUNT(*) FROM conflicts") == [(0,)]


def study_row(store: Store, uid: str) -> tuple[Any, ...]:
    return store.query("SELECT patient_id, n_instances, last_received FROM studies WHERE study_uid=?", (uid,))[0]


def test_the_same_sop_uid_under_another_study_is_a_conflict_not_a_second_stored_file(store: Store) -> None:
    ds = make_ds()
    first = store.ingest(write_temp(store, ds), ORIGIN)
    moved = make_ds(SOPInstanceUID=ds.SOPInstanceUID)  # a new study and series, the same SOP Instance UID
    result = store.ingest(write_temp(store, moved), ORIGIN)
    assert result.conflict
    assert files_under(store.paths.store) == [first.path]
    assert store.instance_count() == 1
    assert store.query("SELECT COUNT(*) FROM conflicts") == [(1,)]


def test_newest_wins_puts_the_corrected_copy_in_place_keeps_the_old_and_reopens_the_study(store: Store) -> None:
    store.conflict_policy = "newest_wins"
    ds = make_ds(PatientID="OLD_ID")
    first = store.ingest(write_temp(store, ds), ORIGIN)
    original = first.path.read_bytes()
    (_, n_before, received_before) = study_row(store, ds.StudyInstanceUID)
    ds.PatientID = "CORRECTED_ID"
    corrected = write_temp(store, ds)
    corrected_dataset = dataset_sha256(corrected)
    result = store.ingest(corrected, ORIGIN)
    assert result.conflict and result.path == first.path
    assert dataset_sha256(first.path) == corrected_dataset
    (kept,) = files_under(store.paths.conflicts)
    assert kept.read_bytes() == original
    assert store.query("SELECT sha256 FROM instances WHERE sop_uid=?", (ds.SOPInstanceUID,)) == [(corrected_dataset,)]
    patient, n_after, received_after = study_row(store, ds.StudyInstanceUID)
    assert (patient, n_after) == ("CORRECTED_ID", n_before)
    assert received_after > received_before  # a processed study is reopened by the completion monitor
    assert store.query("SELECT path FROM conflicts") == [(str(kept.relative_to(store.paths.var)),)]


def test_newest_wins_moving_an_instance_to_another_study_counts_it_there_and_touches_both(store: Store) -> None:
    store.conflict_policy = "newest_wins"
    ds = make_ds()
    first = store.ingest(write_temp(store, ds), ORIGIN)
    moved = make_ds(SOPInstanceUID=ds.SOPInstanceUID)
    result = store.ingest(write_temp(store, moved), ORIGIN)
    assert not first.path.exists() and result.path.exists()
    assert files_under(store.paths.store) == [result.path]
    assert study_row(store, ds.StudyInstanceUID)[1] == 0
    assert study_row(store, moved.StudyInstanceUID)[1] == 1
    assert store.instance_count() == 1


def test_the_same_sop_uid_with_different_content_is_kept_as_a_conflict_and_the_original_is_untouched(store: Store) -> None:
    ds = make_ds()
    first = store.ingest(write_temp(store, ds), ORIGIN)
    original = first.path.read_bytes()
    ds.SeriesDescription = "changed on the modality"
    changed = write_temp(store, ds)
    changed_bytes = changed.read_bytes()
    result = store.ingest(changed, ORIGIN)
    assert result.conflict
    assert first.path.read_bytes() == original
    assert result.path.parent == store.paths.conflicts / ds.SOPInstanceUID
    assert result.path.read_bytes() == changed_bytes
    assert store.instance_count() == 1
    (row,) = store.query("SELECT sop_uid, path, calling_ae FROM conflicts")
    assert row == (ds.SOPInstanceUID, str(result.path.relative_to(store.paths.var)), "UNITTEST")
    # The same conflicting content again adds nothing.
    again = store.ingest(write_temp(store, ds), ORIGIN)
    assert again.conflict and again.path == result.path
    assert len(files_under(store.paths.conflicts)) == 1
    assert store.query("SELECT COUNT(*) FROM conflicts") == [(1,)]
    assert files_under(store.paths.tmp) == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID"])
@pytest.mark.parametrize("value", ["1.2.3.abc", "../../x", "1..2", "1.2.3.", "1." + "2" * 70, "/etc/passwd"])
def test_a_dataset_with_an_invalid_uid_is_quarantined_with_its_reason(store: Store, keyword: str, value: str) -> None:
    ds = make_ds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UI value we mean to write
        setattr(ds, keyword, value)
        tmp = write_temp(store, ds)
    sent = tmp.read_bytes()
    with pytest.raises(StoreError) as err:
        store.ingest(tmp, ORIGIN)
    assert err.value.status == STATUS_INVALID_UIDS
    assert keyword in err.value.reason
    assert files_under(store.paths.store) == []
    assert files_under(store.paths.tmp) == []
    (kept, reason), *others = quarantined(store)
    assert others == []
    assert kept.read_bytes() == sent
    assert f"reason: {keyword}" in reason
    assert "calling_ae: UNITTEST" in reason
    assert store.query("SELECT COUNT(*) FROM instances") == [(0,)]
    assert store.query("SELECT COUNT(*) FROM quarantine") == [(1,)]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_legacy_uids_with_leading_zeros_are_stored_under_their_own_names(store: Store) -> None:
    # Pre-standard equipment wrote components like ".0113."; an old study with them must still be pullable.
    study, series, sop = "1.2.840.0113654.2.70.1.01", "1.2.840.0113654.2.70.1.01.002", "1.2.840.0113654.2.70.1.01.002.0003"
    ds = make_ds(StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=sop)
    result = store.ingest(write_temp(store, ds), ORIGIN)
    assert (result.study_uid, result.series_uid, result.sop_uid) == (study, series, sop)
    assert result.path == store.paths.store / study / series / f"{sop}.dcm"
    assert store.query("SELECT COUNT(*) FROM quarantine") == [(0,)]


def test_a_missing_uid_is_quarantined(store: Store) -> None:
    ds = make_ds()
    del ds.SeriesInstanceUID
    with pytest.raises(StoreError) as err:
        store.ingest(write_temp(store, ds), ORIGIN)
    assert err.value.status == STATUS_INVALID_UIDS
    assert "SeriesInstanceUID missing" in err.value.reason
    assert files_under(store.paths.store) == []


def test_a_dataset_whose_uids_differ_from_the_c_store_command_is_quarantined(store: Store) -> None:
    ds = make_ds()
    with pytest.raises(StoreError) as err:
        store.ingest(write_temp(store, ds), ORIGIN, expected_sop_uid="1.2.3.4")
    assert err.value.status == STATUS_UID_MISMATCH
    with pytest.raises(StoreError) as err:
        store.ingest(write_temp(store, ds), ORIGIN, expected_sop_class="1.2.840.10008.5.1.4.1.1.2")
    assert err.value.status == STATUS_UID_MISMATCH
    assert files_under(store.paths.store) == []
    assert len(quarantined(store)) == 1  # the same bytes twice: one quarantined copy
    assert store.query("SELECT COUNT(*) FROM quarantine") == [(2,)]


def pixel_data_offset(path: Path) -> int:
    """Offset of the first PixelData value byte (Explicit VR LE: tag 4, VR 2, reserved 2, length 4)."""
    data = path.read_bytes()
    at = data.rindex(b"\xe0\x7f\x10\x00OW")
    return at + 12


@pytest.mark.parametrize(
    "where", ["in the pixel data", "inside a header element", "right after the file meta", "inside the pixel data header"]
)
def test_a_truncated_dataset_is_refused_as_undecodable_and_quarantined(store: Store, where: str) -> None:
    ds = make_ds()
    tmp = write_temp(store, ds)
    data = tmp.read_bytes()
    cut = {
        "in the pixel data": pixel_data_offset(tmp) + 100,
        "inside a header element": data.index(ds.StudyDescription.encode()) + 3,
        "right after the file meta": dataset_offset(tmp) + 5,
        "inside the pixel data header": pixel_data_offset(tmp) - 9,
    }[where]
    tmp.write_bytes(data[:cut])
    with pytest.raises(StoreError) as err:
        store.ingest(tmp, ORIGIN)
    assert err.value.status == STATUS_CANNOT_UNDERSTAND
    assert files_under(store.paths.store) == []
    assert files_under(store.paths.tmp) == []
    ((kept, reason),) = quarantined(store)
    assert kept.read_bytes() == data[:cut]
    assert "reason: " in reason
    assert store.query("SELECT COUNT(*) FROM instances") == [(0,)]


def test_bytes_that_are_not_dicom_at_all_are_quarantined(store: Store) -> None:
    tmp = store.new_temp_path()
    tmp.write_bytes(os.urandom(3000))
    with pytest.raises(StoreError) as err:
        store.ingest(tmp, ORIGIN)
    assert err.value.status == STATUS_CANNOT_UNDERSTAND
    assert files_under(store.paths.store) == []
    assert len(quarantined(store)) == 1


def test_path_like_patient_and_series_text_never_reaches_a_path(store: Store) -> None:
    ds = make_ds(
        PatientID="../../../etc/passwd",
        SeriesDescription="../x/\\..\\y\x00z",
        StudyDescription="/tmp/evil",
        PatientName="..^/",
    )
    result = store.ingest(write_temp(store, ds), ORIGIN)
    relative = result.path.relative_to(store.paths.store)
    assert relative.parts == (ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")
    for path in store.paths.var.rglob("*"):
        rel = path.relative_to(store.paths.var)
        if rel.parts[0] == "store":
            assert all(is_valid_uid(part.removesuffix(".dcm")) for part in rel.parts[1:]), rel
    assert not (store.paths.var.parent / "etc").exists()


def test_each_step_is_durable_before_the_next_and_the_index_row_comes_last(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import node.store.store as store_mod

    events: list[tuple[str, str]] = []
    real_fsync_file, real_fsync_dir, real_rename = store_mod.fsync_file, store_mod.fsync_dir, os.rename
    real_index = Store._index

    def fsync_file(path: Path) -> None:
        events.append(("fsync_file", Path(path).name))
        real_fsync_file(path)

    def fsync_dir(path: Path) -> None:
        events.append(("fsync_dir", Path(path).name))
        real_fsync_dir(path)

    def rename(src: Any, dst: Any) -> None:
        events.append(("rename", Path(dst).name))
        real_rename(src, dst)

    def index(self: Store, *args: Any) -> None:
        events.append(("index", ""))
        real_index(self, *args)

    monkeypatch.setattr(store_mod, "fsync_file", fsync_file)
    monkeypatch.setattr(store_mod, "fsync_dir", fsync_dir)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(Store, "_index", index)
    ds = make_ds()
    tmp = write_temp(store, ds)
    store.ingest(tmp, ORIGIN)
    assert events == [
        ("fsync_file", tmp.name),
        ("fsync_dir", "store"),  # study folder created: its entry in store/ made durable
        ("fsync_dir", ds.StudyInstanceUID),  # series folder created
        ("rename", f"{ds.SOPInstanceUID}.dcm"),
        ("fsync_dir", ds.SeriesInstanceUID),
        ("index", ""),
    ]


def test_a_write_failure_answers_out_of_resources_and_leaves_nothing_behind(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", no_space)
    ds = make_ds()
    with pytest.raises(StoreError) as err:
        store.ingest(write_temp(store, ds), ORIGIN)
    assert err.value.status == STATUS_STORE_FAILED
    assert files_under(store.paths.tmp) == []
    assert [p for p in files_under(store.paths.store) if p.suffix == ".dcm"] == []
    assert store.instance_count() == 0


def test_a_file_moved_into_place_but_never_indexed_is_indexed_when_sent_again(store: Store) -> None:
    """A crash between rename and index: never acknowledged, so the sender retries; the retry must complete it."""
    ds = make_ds()
    dest = store.paths.store / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    dest.parent.mkdir(parents=True)
    ds.save_as(dest, enforce_file_format=True)
    result = store.ingest(write_temp(store, ds), ORIGIN)
    assert result.duplicate and not result.conflict
    assert store.instance_count(ds.StudyInstanceUID) == 1
    study = store.study(ds.StudyInstanceUID)
    assert study is not None and study["n_instances"] == 1
    assert files_under(store.paths.tmp) == []


def test_the_temp_sweep_removes_crash_leftovers_and_open_deliveries(store: Store) -> None:
    store.ingest(write_temp(store, make_ds()), ORIGIN)
    assert store.query("SELECT COUNT(*) FROM deliveries") == [(1,)]
    leftover = store.new_temp_path()
    leftover.write_bytes(b"half a dataset")
    (store.paths.tmp / "tmpdir").mkdir()
    (store.paths.tmp / "tmpdir" / "chunk").write_bytes(b"x")
    (store.paths.tmp / "dangling").symlink_to(store.paths.tmp / "nowhere")
    assert store.sweep_temp() == 3
    assert list(store.paths.tmp.iterdir()) == []
    assert store.query("SELECT COUNT(*) FROM deliveries") == [(0,)]
    assert store.instance_count() == 1
    assert store.sweep_temp() == 0


def test_an_index_and_files_survive_reopening_the_store(tmp_path: Path) -> None:
    paths = Paths(inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", var=tmp_path / "var")
    first = Store(paths)
    ds = make_ds()
    stored = first.ingest(write_temp(first, ds), ORIGIN).path
    first.close()
    second = Store(paths)
    try:
        assert second.instance_count() == 1
        assert stored.is_file()
        assert second.query("PRAGMA journal_mode") == [("wal",)]
    finally:
        second.close()


def test_concurrent_deliveries_of_the_same_instance_store_one_file_and_one_row(store: Store) -> None:
    ds = make_ds()
    temps = [write_temp(store, ds) for _ in range(8)]
    results: list[Any] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(temps))

    def deliver(tmp: Path) -> None:
        barrier.wait()
        try:
            results.append(store.ingest(tmp, ORIGIN))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(t,)) for t in temps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.duplicate for r in results) == [False] + [True] * 7
    assert not any(r.conflict for r in results)
    assert [p.suffix for p in files_under(store.paths.store)] == [".dcm"]
    assert store.instance_count() == 1
    assert files_under(store.paths.tmp) == []


def write_large_temp(store: Store, pixel_bytes: int, cut: int = 0) -> Path:
    """A Part 10 temp file with `pixel_bytes` of zero pixels, streamed to disk (optionally `cut` bytes short)."""
    ds = make_ds()
    del ds.PixelData
    ds.Rows, ds.Columns = pixel_bytes // 2 // 8192, 8192
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    path = store.new_temp_path()
    with path.open("wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM" + meta.getvalue() + body.getvalue())
        fh.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
        fh.truncate(fh.tell() + pixel_bytes - cut)
    return path


def resident_growth(action: Any) -> int:
    """Peak resident set growth (bytes) of this process while running action (Linux VmHWM, reset first)."""

    def status(field: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
        return int(line.split()[1]) * 1024

    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    before = status("VmRSS:")
    action()
    return status("VmHWM:") - before


def test_ingesting_a_large_instance_does_not_hold_it_in_memory(store: Store) -> None:
    tmp = write_large_temp(store, 192 * MIB)
    grown = resident_growth(lambda: store.ingest(tmp, ORIGIN))
    assert grown < 48 * MIB, f"{grown / MIB:.0f} MiB"
    (path, sha) = store.query("SELECT path, sha256 FROM instances")[0]
    assert dataset_sha256(store.paths.var / path) == sha


@pytest.mark.parametrize("cut", [100, 10, 3], ids=["inside a fragment", "near the end of a fragment",
                                                   "inside the sequence delimiter"])
def test_encapsulated_pixel_data_cut_short_is_refused_and_quarantined(store: Store, cut: int) -> None:
    from pydicom.uid import RLELossless

    ds = make_ds()
    ds.compress(RLELossless)
    tmp = write_temp(store, ds)
    data = tmp.read_bytes()
    tmp.write_bytes(data[:-cut])
    with pytest.raises(StoreError) as err:
        store.ingest(tmp, ORIGIN)
    assert err.value.status == STATUS_CANNOT_UNDERSTAND
    assert files_under(store.paths.store) == []
    assert len(quarantined(store)) == 1


def test_quarantining_a_large_truncated_instance_does_not_read_it_into_memory(store: Store) -> None:
    tmp = write_large_temp(store, 192 * MIB, cut=1000)
    statuses: list[int] = []

    def refuse() -> None:
        with pytest.raises(StoreError) as err:
            store.ingest(tmp, ORIGIN)
        statuses.append(err.value.status)

    grown = resident_growth(refuse)
    assert statuses == [STATUS_CANNOT_UNDERSTAND]
    assert grown < 48 * MIB, f"{grown / MIB:.0f} MiB"
    assert len(quarantined(store)) == 1


def _orphan(store: Store, ds: Dataset) -> Path:
    """What a kill between the rename and the index commit leaves: the file in place, no row."""
    first = store.ingest(write_temp(store, ds), ORIGIN)
    with store.transaction() as db:
        db.execute("DELETE FROM instances WHERE sop_uid=?", (first.sop_uid,))
    return first.path


def test_an_unacknowledged_file_left_by_a_crash_is_replaced_by_the_instance_that_arrives(store: Store) -> None:
    ds = make_ds()
    orphan = _orphan(store, ds)
    ds.SeriesDescription = "corrected by the PACS"
    result = store.ingest(write_temp(store, ds), ORIGIN)
    assert not result.conflict and not result.duplicate
    assert result.path == orphan
    assert store.query("SELECT sha256 FROM instances WHERE sop_uid=?", (result.sop_uid,)) == [(dataset_sha256(orphan),)]
    assert files_under(store.paths.conflicts) == []


def test_reconcile_at_start_quarantines_store_files_without_a_row_and_keeps_indexed_ones(store: Store) -> None:
    kept = store.ingest(write_temp(store, make_ds()), ORIGIN)
    orphan = _orphan(store, make_ds())
    assert store.reconcile() == 1
    assert kept.path.exists() and not orphan.exists()
    indexed = {store.paths.var / p for (p,) in store.query("SELECT path FROM instances")}
    assert set(files_under(store.paths.store)) == indexed  # the store and the index agree exactly
    reasons = [p.read_text() for p in store.paths.quarantine.glob("*.reason.txt")]
    assert len(reasons) == 1 and "never acknowledged" in reasons[0]


def test_an_index_that_cannot_be_written_answers_out_of_resources_and_keeps_no_file(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    def full(*_args: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "_index", full)
    with pytest.raises(StoreError) as info:
        store.ingest(write_temp(store, make_ds()), ORIGIN)
    assert info.value.status == 0xA700
    assert files_under(store.paths.store) == [] and files_under(store.paths.tmp) == []
