"""The one dataset walker agrees with pydicom on every shipped test file and catches truncation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from node.dicom import reader
from node.store.store import dataset_offset
from toolkit.dicomgen import SeriesSpec, StudySpec, write_study

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


WANTED = {0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x00080060: "Modality",
          0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID", 0x00200013: "InstanceNumber"}


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_the_walker_extracts_the_same_values_as_pydicom(path):
    parsed = part10(path)
    if parsed is None:
        return  # not a little-endian Part 10 file: the store falls back to pydicom for those
    ds, ts, data = parsed
    # every shipped sample: big endian, UN sequences, mislabelled VR
    result = reader.walk(data, ts, wanted=WANTED, strict=True)
    if "truncated" in path.name:
        assert result.truncated is not None  # pydicom reads these leniently; the store must refuse them
        return
    assert result.truncated is None
    for tag, keyword in WANTED.items():
        if keyword in ds and ds[keyword].VR not in ("SQ",) and ds[keyword].value not in (None, ""):
            expected = str(ds[keyword].value).strip()
            assert reader.text(data, result.elements[tag]) == expected, keyword


def test_megabytes_of_zeros_are_refused_at_once_in_every_syntax():
    for ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"):
        with pytest.raises(reader.ReadError):
            reader.walk(bytes(50_000_000), ts, strict=True)  # a walk element by element would take seconds per syntax


@pytest.mark.parametrize("cut", [1, 7, 100, 2000])
def test_a_dataset_cut_short_is_reported_as_truncated(tmp_path, cut):
    (path,) = write_study(StudySpec(series=[SeriesSpec(n_slices=1)]), tmp_path)
    data = path.read_bytes()[dataset_offset(path) :]
    result = reader.walk(data[:-cut], "1.2.840.10008.1.2.1", strict=True)
    assert result.truncated is not None and "truncated" in result.truncated


def test_encapsulated_pixel_data_is_walked_item_by_item():
    path = Path(str(get_testdata_file("JPEG2000.dcm")))
    ds, ts, data = part10(path)
    found = reader.walk(data, ts, strict=True)
    assert reader.text(data, found.elements[0x00080018]) == ds.SOPInstanceUID
    assert found.pixel is not None and found.pixel.length == reader.UNDEFINED
    with pytest.raises(reader.ReadError):
        reader.walk(data[:-10], ts, strict=True)  # the sequence delimiter is gone: not a well-formed dataset


def test_garbage_is_never_taken_for_a_complete_dataset():
    for seed in range(50):
        blob = bytes((seed * 7919 + i * 104729) % 251 for i in range(64)) + b"\x08\x00\x18\x00zz"
        try:
            result = reader.walk(blob, "1.2.840.10008.1.2.1", strict=True)
        except reader.ReadError:
            continue
        assert result.truncated is not None, seed
