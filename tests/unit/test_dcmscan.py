"""The fast dataset walker agrees with pydicom on every shipped test file and catches truncation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from node import dcmscan
from node.store import dataset_offset
from tests.dicomgen import SeriesSpec, StudySpec, write_study

TEST_FILES = Path(str(get_testdata_file("CT_small.dcm"))).parent
SAMPLES = sorted(
    p for p in TEST_FILES.glob("*.dcm") if p.stat().st_size < 5_000_000 and not p.name.startswith(("no_meta", "meta_"))
)


def part10(path: Path):
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom refuses some deliberately broken files; skip those as inputs
        return None
    ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    offset = dataset_offset(path)
    if not ts or offset == 0 or ts.endswith(".99"):
        return None
    return ds, ts, path.read_bytes()[offset:]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_the_walker_extracts_the_same_values_as_pydicom(path):
    parsed = part10(path)
    if parsed is None:
        return  # not a little-endian Part 10 file: the store falls back to pydicom for those
    ds, ts, data = parsed
    result = dcmscan.scan(data, ts)  # every shipped sample: big endian, UN sequences, mislabelled VR
    if "truncated" in path.name:
        assert result.truncated is not None  # pydicom reads these leniently; the store must refuse them
        return
    assert result.truncated is None
    for keyword in dcmscan.WANTED.values():
        if keyword in ds and ds[keyword].VR not in ("SQ",) and ds[keyword].value not in (None, ""):
            expected = str(ds[keyword].value).strip()
            assert result.values.get(keyword) == expected, keyword


def test_megabytes_of_zeros_are_refused_at_once_in_every_syntax():
    for ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"):
        with pytest.raises(dcmscan.ScanError):
            dcmscan.scan(bytes(50_000_000), ts)  # a walk element by element would take seconds per syntax


@pytest.mark.parametrize("cut", [1, 7, 100, 2000])
def test_a_dataset_cut_short_is_reported_as_truncated(tmp_path, cut):
    (path,) = write_study(StudySpec(series=[SeriesSpec(n_slices=1)]), tmp_path)
    data = path.read_bytes()[dataset_offset(path) :]
    result = dcmscan.scan(data[:-cut], "1.2.840.10008.1.2.1")
    assert result.truncated is not None and "truncated" in result.truncated


def test_encapsulated_pixel_data_is_walked_item_by_item():
    path = Path(str(get_testdata_file("JPEG2000.dcm")))
    ds, ts, data = part10(path)
    assert dcmscan.scan(data, ts).values["SOPInstanceUID"] == ds.SOPInstanceUID
    with pytest.raises(dcmscan.ScanError):
        dcmscan.scan(data[:-10], ts)  # the sequence delimiter is gone: not a well-formed dataset


def test_garbage_is_never_taken_for_a_complete_dataset():
    for seed in range(50):
        blob = bytes((seed * 7919 + i * 104729) % 251 for i in range(64)) + b"\x08\x00\x18\x00zz"
        try:
            result = dcmscan.scan(blob, "1.2.840.10008.1.2.1")
        except dcmscan.ScanError:
            continue
        assert result.truncated is not None, seed
