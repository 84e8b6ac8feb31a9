"""The fast header reader gives exactly the rows pydicom's dcmread gives, on every sample file installed."""

from __future__ import annotations

from pathlib import Path

import data_store
import deid_data
import pydicom.data
import pytest

from node.process.workbook.scan import _fast_header, load_templates, scan_headers
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series, write_datasets

SAMPLE_DIRS = [
    Path(pydicom.data.__file__).parent / "test_files",
    Path(pydicom.data.__file__).parent / "charset_files",
    Path(data_store.__file__).parent / "data",  # the pydicom-data package
    Path(deid_data.__file__).parent / "data",
]


def sample_files() -> list[Path]:
    files = sorted(p for d in SAMPLE_DIRS for p in d.rglob("*.dcm"))
    assert len(files) > 150, f"expected the installed sample packages, found {len(files)} files"
    return files


def canonical(records: list[dict]) -> list[dict]:
    # repr() so that NaN equals NaN and 1 (int) differs from 1.0 (float).
    return [{k: repr(v) for k, v in r.items()} for r in records]


def test_the_fast_reader_matches_dcmread_on_every_installed_sample_file(tmp_path: Path) -> None:
    files = sample_files()
    root = Path("/")
    templates = load_templates()
    fast, fast_warnings = scan_headers(files, root, templates=templates, workers=1, fast_reader=True)
    slow, slow_warnings = scan_headers(files, root, templates=templates, workers=1, fast_reader=False)
    assert fast_warnings == slow_warnings
    assert list(fast.columns) == list(slow.columns)
    fast_rows = {r["File"]: r for r in canonical(fast.to_dict(orient="records"))}
    slow_rows = {r["File"]: r for r in canonical(slow.to_dict(orient="records"))}
    assert fast_rows.keys() == slow_rows.keys()
    mismatches = {
        name: {k: (fast_rows[name][k], slow_rows[name][k]) for k in fast_rows[name] if fast_rows[name][k] != slow_rows[name][k]}
        for name in fast_rows
        if fast_rows[name] != slow_rows[name]
    }
    assert mismatches == {}
    assert len(fast_rows) > 150


@pytest.mark.parametrize("cut", [200, 1000, 70_000])
def test_a_truncated_file_is_read_or_reported_never_crashes(tmp_path: Path, cut: int) -> None:
    source = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
    study = tmp_path / "study"
    study.mkdir()
    truncated = study / "cut.dcm"
    truncated.write_bytes(source.read_bytes()[:cut])
    frame, warnings = scan_headers([truncated], study, workers=1)
    assert len(frame) + len(warnings) == 1
    if warnings:
        assert warnings[0].startswith("UNREADABLE: cut.dcm")


def test_a_header_longer_than_the_first_read_is_read_whole_by_the_fast_reader(tmp_path: Path) -> None:
    study = StudySpec(series=[SeriesSpec(n_slices=1, rows=256, cols=256)])
    (ds,) = make_series(study, study.series[0])
    # A Siemens-CSA-sized private blob (group 0019) sits before StudyInstanceUID (0020,000D).
    ds.private_block(0x0019, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", b"\x01" * 150_000)
    (path,) = write_datasets([ds], tmp_path / "study")
    elements = _fast_header(path)
    assert elements is not None
    assert elements[0x0020000D].value == (study.study_uid + "\0" * (len(study.study_uid) % 2)).encode()
    assert 0x7FE00010 not in elements
    frame, warnings = scan_headers([path], tmp_path / "study", workers=1)
    assert (warnings, frame["StudyInstanceUID"].tolist()) == ([], [study.study_uid])


def test_when_the_process_pool_cannot_start_the_scan_runs_serially(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import node.process.workbook.scan

    def no_pool() -> None:
        raise OSError("no process for you")

    monkeypatch.setattr(node.process.workbook.scan, "_pool_context", no_pool)
    study = StudySpec(series=[SeriesSpec(n_slices=3)])
    files = write_datasets(make_series(study, study.series[0]), tmp_path / "study")
    frame, warnings = scan_headers(files, tmp_path / "study", workers=2)
    assert warnings == []
    assert frame["InstanceNumber"].tolist() == [1, 2, 3]


@pytest.mark.parametrize("undefined_lengths", [False, True])
def test_nested_sequences_of_both_length_encodings_are_sliced_out_by_the_fast_reader(tmp_path: Path,
                                                                                     undefined_lengths: bool) -> None:
    from tests.support.handmade import enhanced_mr

    path = enhanced_mr(tmp_path / "study", undefined_lengths)
    elements = _fast_header(path)
    assert elements is not None and elements[0x52009230].VR == "SQ"
    fast, _ = scan_headers([path], tmp_path / "study", workers=1, fast_reader=True)
    slow, _ = scan_headers([path], tmp_path / "study", workers=1, fast_reader=False)
    assert canonical(fast.to_dict(orient="records")) == canonical(slow.to_dict(orient="records"))
    assert fast["EchoTime"].tolist() == [[2.1, 4.5]]
