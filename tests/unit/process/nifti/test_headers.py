"""The fast header reader agrees with pydicom on every value it returns, and hands odd files back to pydicom."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from node.process.nifti.headers import WANTED, read_fast
from node.process.nifti.volumes import SliceInfo, _slice, read_header, read_pixels
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series, write_datasets

STUDY = StudySpec(series=[])


def _pydicom_record(path: Path) -> SliceInfo:
    """The record built from pydicom's parse (what read_header does when the fast reader declines)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return _slice(path, ds, ds, None)


def _same_record(a: SliceInfo, b: SliceInfo) -> None:
    fields = ["sop_uid", "instance_number", "modality", "rows", "cols", "iop", "ipp", "pixel_spacing", "image_type",
              "echo_number", "echo_time", "repetition_time", "flip_angle", "acquisition_number", "temporal_position",
              "trigger_time", "coil", "protocol", "slope", "intercept", "bvalue", "bvec", "gantry_tilt",
              "photometric", "bits_allocated", "bits_stored", "signed", "samples", "transfer_syntax"]
    for name in fields:
        assert getattr(a, name) == getattr(b, name), name


def _with_sequences(tmp_path: Path, undefined: bool, implicit: bool) -> Path:
    ds = make_series(STUDY, SeriesSpec(n_slices=1, extra={"DiffusionBValue": 800.0,
                                                          "DiffusionGradientOrientation": [0.0, 0.6, 0.8]}))[0]
    inner = Dataset()
    inner.CodeValue = "T-A0100"
    inner.CodingSchemeDesignator = "SRT"
    nested = Dataset()
    nested.CodeMeaning = "Brain"
    nested.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.AnatomicRegionSequence = Sequence([nested, copy.deepcopy(nested)])
    ds.ReferencedImageSequence = Sequence([])
    if undefined:
        ds.AnatomicRegionSequence.is_undefined_length = True
        for item in ds.AnatomicRegionSequence:
            item.is_undefined_length_sequence_item = True
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / f"seq_{undefined}_{implicit}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("undefined", [False, True])
@pytest.mark.parametrize("implicit", [False, True])
def test_the_fast_reader_agrees_with_pydicom_across_sequences(tmp_path: Path, undefined: bool, implicit: bool) -> None:
    path = _with_sequences(tmp_path, undefined, implicit)
    assert read_fast(path) is not None
    fast = read_header(path)[0]
    _same_record(fast, _pydicom_record(path))
    assert fast.bvalue == 800.0 and fast.bvec == (0.0, 0.6, 0.8)
    np.testing.assert_array_equal(read_pixels(fast), pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm"])
def test_the_fast_reader_agrees_with_pydicom_on_shipped_files(name: str) -> None:
    found = get_testdata_file(name)
    assert isinstance(found, str)
    path = Path(found)
    fast = read_fast(path)
    assert fast is not None
    _same_record(read_header(path)[0], _pydicom_record(path))
    assert set(fast) - {"_pixel_offset", "_pixel_length", "_transfer_syntax"} <= {kw for kw, _ in WANTED.values()}


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "no_meta.dcm"])
def test_files_the_fast_reader_does_not_handle_go_to_pydicom(name: str) -> None:
    found = get_testdata_file(name)
    assert isinstance(found, str)
    path = Path(found)
    assert read_fast(path) is None


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_siemens_private_diffusion_tags_are_read_without_pydicom(tmp_path: Path, implicit: bool) -> None:
    ds = make_series(STUDY, SeriesSpec(n_slices=1))[0]
    ds.Manufacturer = "SIEMENS"
    ds.add_new((0x0019, 0x0010), "LO", "SIEMENS MR HEADER")
    ds.add_new((0x0019, 0x100C), "IS", "1000")
    ds.add_new((0x0019, 0x100E), "FD", [0.0, 0.6, 0.8])
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = write_datasets([ds], tmp_path)[0]
    fast = read_fast(path)
    assert fast is not None  # no full pydicom parse for a classic Siemens DWI slice
    record = read_header(path)[0]
    assert record.bvalue == 1000.0
    assert record.bvec == pytest.approx((0.0, 0.6, 0.8))
    assert record.parsed is None


def test_group_0019_of_another_creator_is_not_taken_for_siemens_diffusion(tmp_path: Path) -> None:
    ds = make_series(STUDY, SeriesSpec(n_slices=1))[0]
    ds.add_new((0x0019, 0x0010), "LO", "GEMS_ACQU_01")
    ds.add_new((0x0019, 0x100C), "IS", "1000")
    path = write_datasets([ds], tmp_path)[0]
    assert read_header(path)[0].bvalue is None


def test_a_truncated_file_is_an_error_not_a_wrong_image(tmp_path: Path) -> None:
    path = write_datasets(make_series(STUDY, SeriesSpec(n_slices=1)), tmp_path)[0]
    path.write_bytes(path.read_bytes()[:-100])
    record = read_header(path)[0]
    with pytest.raises(ValueError, match=r"truncated|expected"):
        read_pixels(record)


def _enhanced(tmp_path: Path, frames: list[dict[str, object]], undefined: bool, **kwargs: object) -> Path:
    from toolkit.dicomgen import make_enhanced_mr

    ds = make_enhanced_mr(STUDY, SeriesSpec(n_slices=4, rows=8, cols=10, series_description="enh"), frames,
                          **kwargs)  # type: ignore[arg-type]
    if undefined:  # both length forms of every sequence occur in real files
        for elem in ds.iterall():
            if elem.VR == "SQ":
                elem.is_undefined_length = True
                for item in elem.value:
                    item.is_undefined_length_sequence_item = True
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("undefined", [False, True])
def test_enhanced_frames_read_from_the_raw_functional_groups_match_pydicoms_frames(tmp_path: Path,
                                                                                   undefined: bool) -> None:
    from node.process.nifti.volumes import _frames

    frames = [{"slice": k, "echo_time": te, "temporal": 1,
               "frame_type": ["ORIGINAL", "PRIMARY", kind, "NONE"]}
              for kind in ("M", "P") for te in (5.0, 10.0) for k in range(4)]
    path = _enhanced(tmp_path, frames, undefined, philips_private_offset=0.45)
    fast = read_header(path)
    assert all(s.pixel_offset is not None for s in fast)  # the fast reader took it
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    slow = _frames(path, ds, len(frames))
    assert len(fast) == len(slow) == len(frames)
    for a, b in zip(fast, slow, strict=True):
        _same_record(a, b)
        assert a.frame == b.frame
    # The Philips private per-frame copy of the position (0.45 mm off) did not win over the standard one.
    assert {s.ipp for s in fast} == {s.ipp for s in slow}
    whole = pydicom.dcmread(path).pixel_array
    for s in fast[::5]:
        np.testing.assert_array_equal(read_pixels(s, {}), whole[s.frame])


@pytest.mark.parametrize("cut", ["overrun", "not_an_item", "no_delimiter"])
def test_malformed_functional_groups_are_an_error_not_a_guess(tmp_path: Path, cut: str) -> None:
    """A per-frame group whose bytes do not parse is refused with a reason, never read as frames without one."""
    from node.dicom import reader

    path = _enhanced(tmp_path, [{"slice": k} for k in range(4)], undefined=cut == "no_delimiter")
    data = bytearray(path.read_bytes())
    at = data.index(b"\x00\x52\x30\x92SQ")  # (5200,9230) PerFrameFunctionalGroupsSequence, explicit VR LE
    first_item = at + 12
    if cut == "overrun":  # an item claiming more bytes than its sequence has
        data[first_item + 4 : first_item + 8] = (0x7FFFFFF0).to_bytes(4, "little")
    elif cut == "not_an_item":
        data[first_item : first_item + 4] = b"\x08\x00\x18\x00"
    else:  # undefined-length items whose delimiters are gone
        data = data.replace(b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", b"\x09\x00\x10\x00\x00\x00\x00\x00")
    path.write_bytes(bytes(data))
    from node.process.nifti.convert import convert_series

    outcome = convert_series([path], tmp_path / "nifti")
    if cut == "not_an_item":
        # The fast reader refuses it; pydicom reads an item whose tag is damaged as the item it stands for, and
        # every frame is there: the whole volume, not a partial one.
        assert outcome.volumes == 1 and outcome.details["shapes"] == {"nifti/1_enh.nii.gz": [10, 8, 4]}
    else:
        assert outcome.volumes == 0 and not outcome.files
        assert outcome.error is not None and "UNREADABLE" in " ".join(outcome.warnings)
    walk = reader.walk(bytes(data), reader.EXPLICIT_VR_LE, reader.dataset_offset(bytes(data)), stop_at_pixels=True)
    groups = walk.elements.get(0x52009230)
    if groups is not None:
        with pytest.raises(reader.ReadError):
            reader.sequence_items(bytes(data), groups, {0x00200032})
