"""Unit tests of the watch-folder importer: folders, zips, unsafe and oversized members, non-DICOM files, settling."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from node.config import ImportConfig, Paths
from node.receive.importer import Importer, Outcome, bounded_copy, declared_member_count, sniff
from node.store.store import Store
from toolkit.dicomgen import SeriesSpec, StudySpec, multi_series_study, write_study


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(Paths(inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", var=tmp_path / "var"))
    yield s
    s.close()


def make_importer(store: Store, **overrides: Any) -> Importer:
    cfg = ImportConfig(**{"settle_s": 0.0, **overrides})
    importer = Importer(store, store.paths.inbox, cfg)
    for folder in (importer.folder, importer.done, importer.failed):
        folder.mkdir(parents=True, exist_ok=True)
    return importer


def study_files(folder: Path, n_series: int = 2, n_slices: int = 3) -> list[Path]:
    return write_study(multi_series_study(n_series=n_series, n_slices=n_slices), folder)


def outcomes(report: Any) -> dict[str, Outcome]:
    return {r.name: r.outcome for r in report.results}


def temp_files(store: Store) -> list[Path]:
    return sorted(store.paths.tmp.iterdir())


def test_a_dropped_folder_of_dicom_is_stored_indexed_and_moved_to_done(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    files = study_files(tmp_path / "staging" / "study1")
    (tmp_path / "staging" / "study1").rename(importer.folder / "study1")

    (report,) = importer.scan_once()

    assert [r.outcome for r in report.results] == [Outcome.STORED] * len(files)
    assert store.instance_count() == len(files)
    rows = store.query("SELECT DISTINCT calling_ae, assoc_id FROM instances")
    assert rows == [("IMPORT", f"import-{report.batch_id}")]
    assert (importer.done / "study1").is_dir() and not (importer.folder / "study1").exists()
    text = (importer.done / "study1.report.txt").read_text(encoding="utf-8")
    assert "result: done" in text and f"stored={len(files)}" in text
    # The batch's delivery is closed, so completion can decide the study.
    assert store.query("SELECT COUNT(*) FROM deliveries") == [(0,)]
    assert temp_files(store) == []


def test_a_zip_of_a_study_is_stored_without_extracting_to_archive_paths(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    files = study_files(tmp_path / "src")
    with zipfile.ZipFile(importer.folder / "study.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i, f in enumerate(files):
            zf.write(f, f"PATIENT/STUDY/SER{i % 2}/{f.name}")

    (report,) = importer.scan_once()

    assert report.kind == "zip"
    assert set(outcomes(report).values()) == {Outcome.STORED}
    assert store.instance_count() == len(files)
    assert not (tmp_path / "PATIENT").exists() and not (store.paths.var / "PATIENT").exists()
    assert (importer.done / "study.zip").is_file()
    assert temp_files(store) == []


def test_zip_members_with_dotdot_or_absolute_names_are_refused_and_their_siblings_stored(
    store: Store, tmp_path: Path
) -> None:
    importer = make_importer(store)
    good, evil, absolute = study_files(tmp_path / "src", n_series=1, n_slices=3)
    with zipfile.ZipFile(importer.folder / "mixed.zip", "w") as zf:
        zf.write(good, "good.dcm")
        # ZipInfo keeps names verbatim (zf.write would normalise them away), as a hostile archiver would.
        zf.writestr(zipfile.ZipInfo("../evil.dcm"), evil.read_bytes())
        zf.writestr(zipfile.ZipInfo("a/../../evil2.dcm"), evil.read_bytes())
        zf.writestr(zipfile.ZipInfo("/absolute/evil.dcm"), absolute.read_bytes())
        zf.writestr(zipfile.ZipInfo("C:\\windows\\absolute.dcm"), absolute.read_bytes())

    (report,) = importer.scan_once()

    result = outcomes(report)
    assert result["mixed.zip:good.dcm"] == Outcome.STORED
    for name in ("../evil.dcm", "a/../../evil2.dcm", "/absolute/evil.dcm", "C:\\windows\\absolute.dcm"):
        assert result[f"mixed.zip:{name}"] == Outcome.REFUSED, name
    assert store.instance_count() == 1
    assert not (store.paths.var.parent / "evil.dcm").exists() and not (importer.folder.parent / "evil.dcm").exists()
    assert (importer.failed / "mixed.zip").is_file()
    text = (importer.failed / "mixed.zip.report.txt").read_text(encoding="utf-8")
    assert "path traversal" in text and "absolute path" in text and "result: failed: 4 member(s) refused" in text


def bomb_zip(path: Path, member_bytes: int, extra: Sequence[tuple[str, bytes]] = ()) -> None:
    """A member of zeros that deflates ~1000:1, written in chunks so the test itself stays small in memory."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in extra:
            zf.writestr(name, data)
        with zf.open("bomb.dcm", "w", force_zip64=True) as member:
            # A Part 10 preamble first, so the bomb passes the "is it DICOM" sniff and has to be stopped by the caps.
            member.write(b"\x00" * 128 + b"DICM")
            chunk = b"\x00" * (1 << 20)
            for _ in range(member_bytes >> 20):
                member.write(chunk)


def test_a_zip_bomb_is_refused_by_its_compression_ratio_without_inflating_it(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    (good,) = study_files(tmp_path / "src", n_series=1, n_slices=1)
    bomb_zip(importer.folder / "bomb.zip", 200 << 20, [("good.dcm", good.read_bytes())])
    assert (importer.folder / "bomb.zip").stat().st_size < 1 << 20

    (report,) = importer.scan_once()

    result = outcomes(report)
    assert result["bomb.zip:good.dcm"] == Outcome.STORED
    assert result["bomb.zip:bomb.dcm"] == Outcome.REFUSED
    assert "compression ratio" in next(r.detail for r in report.results if r.name == "bomb.zip:bomb.dcm")
    assert temp_files(store) == []
    assert (importer.failed / "bomb.zip").exists()


def test_a_zip_member_whose_header_lies_about_its_size_never_writes_more_than_the_cap(
    store: Store, tmp_path: Path
) -> None:
    # Declared sizes in the central directory say 1000 bytes; the data inflates to 50 MB of zeros.
    importer = make_importer(store, zip_max_ratio=1_000_000, max_file_bytes=4 << 20)
    path = importer.folder / "liar.zip"
    bomb_zip(path, 50 << 20)
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", 1000)  # uncompressed size in the central directory
    extra_at = central + 46 + struct.unpack("<H", raw[central + 28 : central + 30])[0]
    if raw[extra_at : extra_at + 2] == b"\x01\x00":  # zip64 extra field: patch its 64-bit size too
        raw[extra_at + 4 : extra_at + 12] = struct.pack("<Q", 1000)
    path.write_bytes(bytes(raw))

    (report,) = importer.scan_once()

    (member,) = report.results
    assert member.outcome == Outcome.REFUSED, member
    assert "corrupt member" in member.detail or "inflated past" in member.detail, member.detail
    assert temp_files(store) == []
    assert store.instance_count() == 0


def test_a_zip_member_above_the_per_member_cap_is_refused_while_streaming(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store, max_file_bytes=64 << 10)
    with zipfile.ZipFile(importer.folder / "big.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("big.dcm", os.urandom(200 << 10))

    (report,) = importer.scan_once()

    (member,) = report.results
    assert member.outcome == Outcome.REFUSED and "import.max_file_bytes" in member.detail


def test_a_zip_with_more_members_than_allowed_is_refused_before_reading_any(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store, zip_max_members=3)
    files = study_files(tmp_path / "src", n_series=1, n_slices=4)
    with zipfile.ZipFile(importer.folder / "many.zip", "w") as zf:
        for f in files:
            zf.write(f, f.name)
    assert declared_member_count(importer.folder / "many.zip") == 4

    (report,) = importer.scan_once()

    assert [r.outcome for r in report.results] == [Outcome.REFUSED]
    assert "zip_max_members" in report.results[0].detail
    assert store.instance_count() == 0


def test_a_nested_zip_is_refused_and_the_rest_of_the_archive_imported(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    (good,) = study_files(tmp_path / "src", n_series=1, n_slices=1)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.write(good, "inner.dcm")
    with zipfile.ZipFile(importer.folder / "outer.zip", "w") as zf:
        zf.writestr("inner.zip", inner.getvalue())
        zf.writestr("inner-renamed.bin", inner.getvalue())
        zf.write(good, "good.dcm")

    (report,) = importer.scan_once()

    result = outcomes(report)
    assert result["outer.zip:inner.zip"] == Outcome.REFUSED
    assert result["outer.zip:inner-renamed.bin"] == Outcome.REFUSED
    assert result["outer.zip:good.dcm"] == Outcome.STORED


def test_non_dicom_files_are_skipped_and_listed_not_quarantined(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    folder = tmp_path / "staging" / "cd"
    study_files(folder / "DATA", n_series=1, n_slices=2)
    (folder / "README.txt").write_text("burned on a CD\n", encoding="utf-8")
    (folder / "Thumbs.db").write_bytes(os.urandom(3000))
    (folder / "tiny").write_bytes(b"\x08\x00")
    dicomdir = Dataset()
    dicomdir.FileSetID = "CD"
    dicomdir.DirectoryRecordSequence = []
    dicomdir.file_meta = FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.1.3.10")  # Media Storage Directory
    dicomdir.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dicomdir.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicomdir.save_as(folder / "DICOMDIR.copy", enforce_file_format=True)  # recognised by content, not by name
    (folder / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 64)
    folder.rename(importer.folder / "cd")

    (report,) = importer.scan_once()

    result = outcomes(report)
    for name in ("cd/README.txt", "cd/Thumbs.db", "cd/tiny", "cd/DICOMDIR", "cd/DICOMDIR.copy"):
        assert result[name] == Outcome.SKIPPED, name
    assert sum(1 for o in result.values() if o == Outcome.STORED) == 2
    assert list(store.paths.quarantine.iterdir()) == []
    assert (importer.done / "cd").is_dir()
    text = (importer.done / "cd.report.txt").read_text(encoding="utf-8")
    assert "cd/README.txt\tnot DICOM" in text


def test_a_dataset_without_preamble_and_file_meta_is_stored_with_its_bytes_unchanged(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    (src,) = study_files(tmp_path / "src", n_series=1, n_slices=1)
    ds = dcmread(src)
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    raw = importer.folder / "IM0001"
    ds.save_as(raw, implicit_vr=True, little_endian=True)  # no preamble, no group 0002, like old CD exports
    assert sniff(raw.read_bytes()[:132]) == "raw"
    body = raw.read_bytes()

    (report,) = importer.scan_once()

    assert outcomes(report) == {"IM0001": Outcome.STORED}
    (stored,) = (store.paths.store).rglob("*.dcm")
    again = dcmread(stored)
    assert again.SOPInstanceUID == ds.SOPInstanceUID
    assert str(again.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2"
    assert stored.read_bytes().endswith(body)


def test_a_truncated_dicom_file_is_quarantined_with_its_reason_and_the_item_fails(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    folder = tmp_path / "staging" / "mixed"
    good, bad = study_files(folder, n_series=1, n_slices=2)
    bad.write_bytes(bad.read_bytes()[:-500])
    folder.rename(importer.folder / "mixed")

    (report,) = importer.scan_once()

    result = outcomes(report)
    assert result[f"mixed/{good.name}"] == Outcome.STORED
    assert result[f"mixed/{bad.name}"] == Outcome.QUARANTINED
    assert len(list(store.paths.quarantine.glob("*.reason.txt"))) == 1
    assert (importer.failed / "mixed").is_dir()
    assert "truncated" in (importer.failed / "mixed.report.txt").read_text(encoding="utf-8")


def test_symlinks_inside_a_dropped_folder_are_not_followed(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    outside = study_files(tmp_path / "outside", n_series=1, n_slices=2)
    folder = tmp_path / "staging" / "links"
    (inside,) = study_files(folder, n_series=1, n_slices=1)
    (folder / "link.dcm").symlink_to(outside[0])
    (folder / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    folder.rename(importer.folder / "links")

    (report,) = importer.scan_once()

    result = outcomes(report)
    assert result["links/link.dcm"] == Outcome.SKIPPED and result["links/linkdir"] == Outcome.SKIPPED
    assert result[f"links/{inside.name}"] == Outcome.STORED
    assert store.instance_count() == 1


def test_importing_the_same_study_twice_is_idempotent_and_keeps_both_reports(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    files = study_files(tmp_path / "src", n_series=1, n_slices=2)
    for _ in range(2):
        with zipfile.ZipFile(importer.folder / "again.zip", "w") as zf:
            for f in files:
                zf.write(f, f.name)
        importer.scan_once()

    assert store.instance_count() == 2
    reports = sorted(importer.done.glob("again*.report.txt"))
    assert len(reports) == 2
    assert any("duplicate=2" in r.read_text(encoding="utf-8") for r in reports)
    assert len(list(importer.done.glob("again*.zip"))) == 2


def test_an_item_is_imported_only_once_it_has_stopped_changing(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store, settle_s=5.0)
    (f,) = study_files(tmp_path / "src", n_series=1, n_slices=1)
    growing = importer.folder / "growing.dcm"
    growing.write_bytes(f.read_bytes()[:1000])
    (importer.folder / ".hidden.dcm").write_bytes(f.read_bytes())
    (importer.folder / "upload.dcm.part").write_bytes(f.read_bytes())

    assert importer.scan_once(now=100.0) == []
    growing.write_bytes(f.read_bytes())
    assert importer.scan_once(now=104.0) == []  # changed: the clock starts again
    assert importer.scan_once(now=108.0) == []
    (report,) = importer.scan_once(now=109.5)

    assert report.item == "growing.dcm" and outcomes(report) == {"growing.dcm": Outcome.STORED}
    assert (importer.folder / ".hidden.dcm").exists() and (importer.folder / "upload.dcm.part").exists()


def test_an_item_renamed_into_the_folder_is_imported_without_waiting_to_settle(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store, settle_s=3600.0)
    (f,) = study_files(tmp_path / "src", n_series=1, n_slices=1)
    f.rename(importer.folder / "whole.dcm")
    importer.renamed_in(importer.folder / "whole.dcm")

    (report,) = importer.scan_once(now=0.0)

    assert outcomes(report) == {"whole.dcm": Outcome.STORED}


def test_bounded_copy_stops_one_chunk_past_the_limit_whatever_the_source_says() -> None:
    out = io.BytesIO()
    with pytest.raises(Exception, match="1025"):
        bounded_copy(io.BytesIO(b"x" * 10_000), out, 1024)
    assert len(out.getvalue()) == 0
    out = io.BytesIO()
    assert bounded_copy(io.BytesIO(b"x" * 1024), out, 1024) == 1024


def test_sniff_tells_part10_raw_datasets_and_other_files_apart() -> None:
    assert sniff(b"\x00" * 128 + b"DICM") == "part10"
    assert sniff(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100") == "raw"
    assert sniff(b"\x08\x00\x16\x00\x1a\x00\x00\x001.2.840") == "raw"
    assert sniff(b"%PDF-1.7\n") is None
    assert sniff(b"PK\x03\x04rest") is None
    assert sniff(b"") is None


def test_an_item_interrupted_by_a_stop_stays_in_place_and_its_delivery_is_closed(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    study_files(tmp_path / "staging" / "big")
    (tmp_path / "staging" / "big").rename(importer.folder / "big")
    importer.stop()  # never started: only sets the stop flag the batch checks between members

    assert importer.import_item(importer.folder / "big") is None

    assert (importer.folder / "big").is_dir() and list(importer.done.iterdir()) == []
    assert store.query("SELECT COUNT(*) FROM deliveries") == [(0,)]


def test_delete_imported_removes_a_clean_item_but_keeps_its_report(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store, delete_imported=True)
    study_files(tmp_path / "staging" / "exam", n_series=1, n_slices=2)
    (tmp_path / "staging" / "exam").rename(importer.folder / "exam")

    importer.scan_once()

    assert not (importer.folder / "exam").exists() and not (importer.done / "exam").exists()
    assert "stored=2" in (importer.done / "exam.report.txt").read_text(encoding="utf-8")


def test_imports_wait_while_the_disk_guard_is_tripped(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    full = [True]
    importer.disk_ok = lambda: not full[0]
    study_files(tmp_path / "staging" / "exam", n_series=1, n_slices=1)
    (tmp_path / "staging" / "exam").rename(importer.folder / "exam")

    assert importer.scan_once() == []
    assert (importer.folder / "exam").is_dir() and store.instance_count() == 0
    full[0] = False
    assert len(importer.scan_once()) == 1 and store.instance_count() == 1


def test_an_item_that_cannot_be_filed_away_is_not_imported_again_until_it_changes(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    importer.done.rmdir()
    importer.done.write_text("a file where the done/ folder should be", encoding="utf-8")
    (f,) = study_files(tmp_path / "src", n_series=1, n_slices=1)
    item = importer.folder / "one.dcm"
    item.write_bytes(f.read_bytes())

    assert len(importer.scan_once()) == 1
    assert importer.scan_once() == [] and importer.scan_once() == []
    item.write_bytes(f.read_bytes() + b"")  # same bytes, new mtime: a user dropping it again
    os.utime(item, ns=(item.stat().st_atime_ns, item.stat().st_mtime_ns + 1_000_000_000))

    (again,) = importer.scan_once()
    assert outcomes(again) == {"one.dcm": Outcome.DUPLICATE}


def test_a_batch_pauses_between_members_when_the_disk_guard_trips_and_resumes_later(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    calls = [0]

    def disk_ok() -> bool:
        calls[0] += 1
        return calls[0] <= 3  # room for the pre-check and two members, then the disk is "full"

    importer.disk_ok = disk_ok
    study_files(tmp_path / "staging" / "exam", n_series=1, n_slices=4)
    (tmp_path / "staging" / "exam").rename(importer.folder / "exam")

    assert importer.scan_once() == []
    assert store.instance_count() == 2 and (importer.folder / "exam").is_dir()
    assert store.query("SELECT COUNT(*) FROM deliveries") == [(0,)]
    importer.disk_ok = lambda: True
    (report,) = importer.scan_once()
    assert report.counts() == {"duplicate": 2, "stored": 2}


def test_control_characters_in_member_names_cannot_forge_report_lines(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    with zipfile.ZipFile(importer.folder / "names.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("../x\nstored:\tfake.dcm"), b"not dicom")

    importer.scan_once()

    text = (importer.failed / "names.zip.report.txt").read_text(encoding="utf-8")
    (line,) = [line for line in text.splitlines() if "fake.dcm" in line]
    assert "\\x0a" in line and "\\x09" in line and "path traversal" in line


def test_a_sparse_file_with_a_dicom_header_is_refused_not_stored_densely(store: Store, tmp_path: Path) -> None:
    importer = make_importer(store)
    (source,) = write_study(StudySpec(series=[SeriesSpec(n_slices=1)]), tmp_path / "src")
    sparse = importer.folder / "huge.dcm"
    with sparse.open("wb") as fh:
        fh.write(source.read_bytes())
        fh.truncate(2 << 30)  # 2 GiB declared, a few kB written: the rest is holes
    (report,) = importer.scan_once()
    (result,) = report.results
    assert result.outcome == Outcome.REFUSED
    assert "a sparse file" in result.detail
    assert store.instance_count() == 0 and temp_files(store) == []
