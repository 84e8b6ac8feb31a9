"""dicom-node's NIfTI output compared with Debian's dcm2niix on the same inputs (files, shape, affine, voxels)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom.data
import pytest
from pydicom.data import get_testdata_file

from node.process.nifti.convert import NiftiOptions, convert_series
from toolkit.dicomgen import (
    SeriesSpec,
    StudySpec,
    make_mosaic_series,
    make_multivolume_series,
    make_series,
    oblique_iop,
    write_datasets,
)

pytestmark = pytest.mark.integration

DCM2NIIX = "/usr/bin/dcm2niix"
STUDY = StudySpec(series=[])
AFFINE_MM = 1e-3
AFFINE_RAD = 1e-4
DATA_STORE = Path(pydicom.data.__file__).resolve().parents[2] / "data_store" / "data"


def _nii(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image), path
    return img


@pytest.fixture(scope="module")
def dcm2niix() -> str:
    assert Path(DCM2NIIX).is_file(), f"dcm2niix is required (Debian package dcm2niix) at {DCM2NIIX}"
    return DCM2NIIX


def run_dcm2niix(tool: str, src: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True)
    subprocess.run([tool, "-z", "n", "-b", "y", "-f", "%s_%d", "-o", str(out), str(src)],
                   check=True, capture_output=True, timeout=120)
    return sorted(out.glob("*.nii"))


def compare(tool: str, files: list[Path], tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Convert with both tools and assert the dcm2niix equivalence; return (theirs, ours)."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for f in files:
        if f.parent != src:
            shutil.copy(f, src / f.name)
    theirs = run_dcm2niix(tool, src, tmp_path / "dcm2niix")
    outcome = convert_series(sorted(src.iterdir()), tmp_path / "study" / "nifti", NiftiOptions(compress=False))
    ours = sorted(tmp_path / "study" / f for f in outcome.files if f.endswith(".nii"))
    assert outcome.error is None, outcome.error
    # dcm2niix keeps a trailing "_" when the description is empty; our slug drops it.
    assert [p.stem.rstrip("_") for p in theirs] == [p.stem for p in ours], (theirs, ours, outcome)
    for a_path, b_path in zip(theirs, ours, strict=True):
        a, b = _nii(a_path), _nii(b_path)
        assert a.shape == b.shape, (a_path.name, a.shape, b.shape)
        assert_same_affine(a.affine, b.affine)
        slope = float(getattr(a.dataobj, "slope", 1.0))  # nibabel moves scl_slope into the array proxy
        if np.isfinite(slope) and slope not in (0.0, 1.0):
            # dcm2niix kept integers with a float32 scl_slope (Philips precise values): the node writes the exact
            # values as float32. They agree within float32 rounding, not bit for bit.
            np.testing.assert_allclose(b.get_fdata(), a.get_fdata(), rtol=2e-6, err_msg=a_path.name)
        else:
            np.testing.assert_array_equal(a.get_fdata(), b.get_fdata(), err_msg=a_path.name)
    return theirs, ours


def assert_same_affine(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a[:3, 3], b[:3, 3], atol=AFFINE_MM, err_msg="origin (mm)")
    np.testing.assert_allclose(np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0), atol=AFFINE_MM,
                               err_msg="voxel size (mm)")
    ua = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)
    ub = b[:3, :3] / np.linalg.norm(b[:3, :3], axis=0)
    np.testing.assert_allclose(ua, ub, atol=AFFINE_RAD, err_msg="axis directions (rad)")


def _series(**kw) -> Callable[[], list]:
    return lambda: make_series(STUDY, SeriesSpec(**kw))


def _dwi(orientation) -> list:
    vecs = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0.7071, 0.7071, 0), (0.0, -0.6, 0.8)]
    volumes = [{"AcquisitionNumber": i + 1, "DiffusionBValue": 0.0 if i == 0 else 1000.0,
                "DiffusionGradientOrientation": [float(c) for c in v]} for i, v in enumerate(vecs)]
    return make_multivolume_series(STUDY, SeriesSpec(series_number=8, series_description="ep2d_diff",
                                                     orientation=orientation), volumes)


def _dwi_multiband_acquisition_numbers() -> list:
    """Philips multiband DTI: AcquisitionNumber counts per slice group, not per volume, so at some positions it
    runs against the volume order. Volumes must follow InstanceNumber (as dcm2niix), not AcquisitionNumber."""
    vecs = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0.7071, 0.7071, 0)]
    n = len(vecs)
    volumes = [{"AcquisitionNumber": (lambda k, v=v: n - v if k % 4 == 1 else v + 1),
                "DiffusionBValue": 0.0 if v == 0 else 1000.0,
                "DiffusionGradientOrientation": [float(c) for c in vec]} for v, vec in enumerate(vecs)]
    return make_multivolume_series(STUDY, SeriesSpec(series_number=9, series_description="dti_multiband",
                                                     n_slices=8), volumes)


DWI_VECS = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]


def _philips_dti_with_trace() -> list:
    """Philips DTI: b0, three directions, and the scanner's derived isotropic (trace) volume at b1000 with a zero
    vector. dcm2niix writes the trace apart (_ADC); it must not sit in the DWI 4D as a fourth 'direction'."""
    volumes = [{"DiffusionBValue": 0.0, "DiffusionGradientOrientation": [0.0, 0.0, 0.0]}]
    volumes += [{"DiffusionBValue": 1000.0, "DiffusionGradientOrientation": list(v)} for v in DWI_VECS]
    volumes.append({"DiffusionBValue": 1000.0, "DiffusionGradientOrientation": [0.0, 0.0, 0.0],
                    "DiffusionDirectionality": "ISOTROPIC"})
    return make_multivolume_series(STUDY, SeriesSpec(series_number=13, series_description="dti_trace", n_slices=4,
                                                     extra={"Manufacturer": "Philips Medical Systems"}), volumes)


def _ge_field_map(image_type: list[str], kinds: list[int]) -> Callable[[], list]:
    """A GE field map / complex series: the volumes differ only by GE's private image kind (0043,102F)."""
    def build() -> list:
        datasets = make_multivolume_series(STUDY, SeriesSpec(series_number=7, series_description="B0map", n_slices=4,
                                                             extra={"Manufacturer": "GE MEDICAL SYSTEMS",
                                                                    "ImageType": image_type}), [{} for _ in kinds])
        for i, ds in enumerate(datasets):
            ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x2F, "SS", kinds[i // 4])
        return datasets
    return build


def _philips_scaled() -> list:
    """Philips classic MR with RescaleSlope/Intercept and the private MRScaleSlope (2005,100E)."""
    datasets = make_series(STUDY, SeriesSpec(n_slices=5, rows=12, cols=10, rescale=(2.5, -10.0),
                                             series_description="philips_t1",
                                             extra={"Manufacturer": "Philips Medical Systems"}))
    for ds in datasets:
        ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", 0.3)
    return datasets


def _siemens_dwi_mosaic() -> list:
    """Mosaic DWI carrying b-values and directions only in Siemens private elements (0019,100C/100E)."""
    vecs = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.8, 0.6), (0.0, 0.0, 1.0)]
    spec = SeriesSpec(n_slices=9, rows=16, cols=16, orientation=oblique_iop(12, "x"), series_number=11,
                      series_description="ep2d_diff_mosaic")
    datasets = make_mosaic_series(STUDY, spec, n_volumes=len(vecs))
    for ds, vec in zip(datasets, vecs, strict=True):
        b = 0 if vec == (0.0, 0.0, 0.0) else 1000
        ds.add_new((0x0019, 0x100C), "IS", str(b))
        ds.add_new((0x0019, 0x100E), "FD", list(vec))
        ds.SequenceName = f"*ep_b{b}#1"
    return datasets


GENERATED: dict[str, Callable[[], list]] = {
    "axial_hfs": _series(series_description="t1_tse_tra"),
    "sagittal": _series(orientation="SAG", series_description="t2_sag", rows=28, cols=36),
    "coronal_hfp": _series(orientation="COR", patient_position="HFP", series_description="cor"),
    "axial_ffs_shuffled": _series(patient_position="FFS", shuffle_instance_numbers=True),
    "oblique_x": _series(orientation=oblique_iop(20, "x"), series_description="obl"),
    "oblique_y_ffs": _series(orientation=oblique_iop(-25, "y"), patient_position="FFS", shuffle_instance_numbers=True),
    "decubitus": _series(orientation=oblique_iop(90, "z"), patient_position="HFDL"),
    "ct_hu": _series(modality="CT", n_slices=12, series_description="abdomen"),
    "two_echoes": lambda: make_multivolume_series(
        STUDY, SeriesSpec(series_number=6, series_description="t2_me"),
        [{"EchoNumbers": 1, "EchoTime": 10.0}, {"EchoNumbers": 2, "EchoTime": 30.0}]),
    "bold_4d": lambda: make_multivolume_series(
        STUDY, SeriesSpec(series_number=7, series_description="bold"),
        [{"AcquisitionNumber": t + 1, "TemporalPositionIdentifier": t + 1} for t in range(5)]),
    "dwi_oblique": lambda: _dwi(oblique_iop(15, "x")),
    "dwi_sagittal": lambda: _dwi("SAG"),
    "dwi_multiband_acquisition_numbers": _dwi_multiband_acquisition_numbers,
    "philips_precise_scaling": _philips_scaled,
    "ge_field_map_complex": _ge_field_map(["ORIGINAL", "PRIMARY", "OTHER"], [0, 1, 2, 3]),
    "ge_field_map_phase_typed_magnitude": _ge_field_map(["ORIGINAL", "PRIMARY", "M", "ND"], [0, 1]),
    "plain_mr_with_zero_b_value": _series(series_description="t1_philips",
                                          extra={"DiffusionBValue": 0.0, "Manufacturer": "Philips Medical Systems"}),
    "mprage_3d_sagittal": _series(orientation="SAG", n_slices=12, slice_spacing=1.0, series_description="mprage",
                                  extra={"MRAcquisitionType": "3D"}),
    "3d_coronal_ffs": _series(orientation="COR", patient_position="FFS", n_slices=12, rows=20, cols=24,
                              slice_spacing=1.2, extra={"MRAcquisitionType": "3D"}),
    "3d_oblique": _series(orientation=oblique_iop(130, "z"), n_slices=12, extra={"MRAcquisitionType": "3D"}),
    "mosaic_axial": lambda: make_mosaic_series(STUDY, SeriesSpec(n_slices=10, rows=16, cols=20)),
    "mosaic_descending": lambda: make_mosaic_series(STUDY, SeriesSpec(n_slices=10, rows=16, cols=20),
                                                    reverse_slices=True),
    "mosaic_sagittal_descending": lambda: make_mosaic_series(
        STUDY, SeriesSpec(n_slices=9, rows=16, cols=16, orientation="SAG"), reverse_slices=True),
    "mosaic_bold_4d": lambda: make_mosaic_series(
        STUDY, SeriesSpec(n_slices=7, rows=16, cols=16, orientation=oblique_iop(15, "x"), series_description="bold"),
        n_volumes=3),
    "mosaic_dwi_siemens_private": _siemens_dwi_mosaic,
}


@pytest.mark.parametrize("case", sorted(GENERATED))
def test_generated_series_match_dcm2niix(dcm2niix: str, tmp_path: Path, case: str) -> None:
    files = write_datasets(GENERATED[case](), tmp_path / "src")
    theirs, ours = compare(dcm2niix, files, tmp_path)
    for a, b in zip(theirs, ours, strict=True):
        for ext in (".bval", ".bvec"):
            ref, mine = a.with_suffix(ext), b.with_suffix(ext)
            assert ref.exists() == mine.exists(), (ref.name, mine.name)
            if ref.exists():
                np.testing.assert_allclose(np.loadtxt(mine), np.loadtxt(ref), atol=1e-5, err_msg=ext)


def test_dwi_output_has_bvals_and_bvecs_like_dcm2niix(dcm2niix: str, tmp_path: Path) -> None:
    files = write_datasets(_dwi(oblique_iop(15, "x")), tmp_path / "src")
    theirs, ours = compare(dcm2niix, files, tmp_path)
    assert ours[0].with_suffix(".bval").exists() and theirs[0].with_suffix(".bval").exists()


SHIPPED = ["MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
           "693_J2KR.dcm", "emri_small.dcm", "eCT_Supplemental.dcm"]


@pytest.mark.parametrize("name", SHIPPED)
def test_files_shipped_with_pydicom_match_dcm2niix(dcm2niix: str, tmp_path: Path, name: str) -> None:
    found = get_testdata_file(name)
    path = Path(found) if found else DATA_STORE / name
    assert path.is_file(), f"test file {name} not installed (pydicom / pydicom-data)"
    compare(dcm2niix, [path], tmp_path)


NIBABEL_NICOM = Path(nib.__file__).parent / "nicom" / "tests" / "data"


@pytest.mark.parametrize("names", [["siemens_dwi_0.dcm.gz"], ["siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz"]])
def test_siemens_dwi_mosaics_shipped_with_nibabel_match_dcm2niix(dcm2niix: str, tmp_path: Path, names: list[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in names:
        packed = NIBABEL_NICOM / name
        assert packed.is_file(), f"nibabel test file {name} not installed"
        (src / name.removesuffix(".gz")).write_bytes(gzip.decompress(packed.read_bytes()))
    _theirs, ours = compare(dcm2niix, sorted(src.iterdir()), tmp_path)
    # dcm2niix writes no bval/bvec for this two-volume pair; ours come from the Siemens private elements.
    bvals = ours[0].with_suffix(".bval").read_text().split()
    assert bvals == (["0"] if len(names) == 1 else ["0", "1000"])
    if len(names) == 2:
        bvec = np.loadtxt(ours[0].with_suffix(".bvec"))
        assert np.linalg.norm(bvec[:, 1]) == pytest.approx(1.0, abs=1e-5)


def test_the_sidecar_carries_the_bids_fields_dcm2niix_writes(dcm2niix: str, tmp_path: Path) -> None:
    import json

    files = write_datasets(GENERATED["axial_hfs"](), tmp_path / "src")
    theirs, ours = compare(dcm2niix, files, tmp_path)
    ref = json.loads(theirs[0].with_suffix(".json").read_text())
    mine = json.loads(ours[0].with_suffix(".json").read_text())
    shared = ["Modality", "MagneticFieldStrength", "Manufacturer", "ManufacturersModelName", "PatientPosition",
              "SeriesDescription", "ProtocolName", "ScanningSequence", "SequenceVariant", "ImageType",
              "SeriesNumber", "SliceThickness", "EchoTime", "RepetitionTime", "FlipAngle",
              "ImageOrientationPatientDICOM"]
    for key in shared:
        assert key in ref, f"dcm2niix no longer writes {key}"
        assert mine.get(key) == pytest.approx(ref[key]) if isinstance(ref[key], float) else mine.get(key) == ref[key], key


def test_multi_valued_software_versions_are_written_as_dcm2niix_writes_them(dcm2niix: str, tmp_path: Path) -> None:
    import json

    files = write_datasets(make_series(STUDY, SeriesSpec(n_slices=3, series_description="ge", extra={
        "SoftwareVersions": ["27", "LX", "MR Software release:RX27.0_R02_1831.a"]})), tmp_path / "src")
    theirs, ours = compare(dcm2niix, files, tmp_path)
    ref = json.loads(theirs[0].with_suffix(".json").read_text())["SoftwareVersions"]
    assert json.loads(ours[0].with_suffix(".json").read_text())["SoftwareVersions"] == ref == (
        "27\\LX\\MR Software release:RX27.0_R02_1831.a")


def test_philips_display_scaling_is_the_option_and_the_sidecar_says_which(dcm2niix: str, tmp_path: Path) -> None:
    import json

    files = write_datasets(_philips_scaled(), tmp_path / "src")
    theirs, ours = compare(dcm2niix, files, tmp_path)  # precise by default, voxel for voxel with dcm2niix
    ref = json.loads(theirs[0].with_suffix(".json").read_text())
    mine = json.loads(ours[0].with_suffix(".json").read_text())
    for key in ("PhilipsRescaleSlope", "PhilipsRescaleIntercept", "PhilipsScaleSlope", "UsePhilipsFloatNotDisplayScaling"):
        assert mine[key] == pytest.approx(ref[key]), key
    display = convert_series(files, tmp_path / "display" / "nifti", NiftiOptions(compress=False, philips_scaling="display"))
    shown = _nii(tmp_path / "display" / display.files[0]).get_fdata()
    precise = _nii(ours[0]).get_fdata()
    np.testing.assert_allclose(shown, precise * 2.5 * 0.3, rtol=1e-5)  # display = precise x RS x SS
    assert "UsePhilipsFloatNotDisplayScaling" not in json.loads((tmp_path / "display" / display.files[1]).read_text())


def test_a_philips_trace_volume_leaves_the_dwi_4d_and_is_written_apart(dcm2niix: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_datasets(_philips_dti_with_trace(), src)
    theirs = run_dcm2niix(dcm2niix, src, tmp_path / "dcm2niix")
    outcome = convert_series(sorted(src.iterdir()), tmp_path / "study" / "nifti", NiftiOptions(compress=False))
    assert any(w.startswith("DIFFUSION_TRACE: 1 derived isotropic") for w in outcome.warnings), outcome.warnings
    dwi, trace = (_nii(tmp_path / "study" / "nifti" / n) for n in ("13_dti_trace.nii", "13_dti_trace_ADC.nii"))
    ref_dwi, ref_adc = (_nii(p) for p in theirs)  # dcm2niix: the DWI 4D without the trace, and an _ADC file
    assert dwi.shape == ref_dwi.shape == (32, 32, 4, 4)
    assert_same_affine(dwi.affine, ref_dwi.affine)
    np.testing.assert_array_equal(dwi.get_fdata(), ref_dwi.get_fdata())
    np.testing.assert_allclose(np.loadtxt(tmp_path / "study" / "nifti" / "13_dti_trace.bval"),
                               np.loadtxt(theirs[0].with_suffix(".bval")))
    # Debian's dcm2niix puts every volume, trace included, in its _ADC file; the node writes the trace alone
    # there (a deliberate difference, docs/nifti.md): it is dcm2niix's last volume.
    assert ref_adc.shape == (32, 32, 4, 5) and trace.shape == (32, 32, 4)
    np.testing.assert_array_equal(trace.get_fdata(), ref_adc.get_fdata()[..., 4])
    assert not (tmp_path / "study" / "nifti" / "13_dti_trace_ADC.bval").exists()


@pytest.mark.parametrize("phase", ["COL", "ROW"])
@pytest.mark.parametrize("orientation", ["AX", "SAG", "COR", "oblique"])
def test_ge_private_diffusion_tags_give_the_bvals_and_bvecs_dcm2niix_gives(dcm2niix: str, tmp_path: Path,
                                                                          phase: str, orientation: str) -> None:
    # GE keeps the b-value in (0043,1039) (first value; some versions add 1e9) and the gradient in
    # (0019,10BB/BC/BD), in the image frame: nothing in the standard diffusion attributes.
    vecs = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.36, 0.48, 0.8)]
    iop = oblique_iop(20, "x") if orientation == "oblique" else orientation
    datasets = make_multivolume_series(STUDY, SeriesSpec(series_number=15, series_description="ge_dti", n_slices=4,
                                                         orientation=iop,
                                                         extra={"Manufacturer": "GE MEDICAL SYSTEMS",
                                                                "InPlanePhaseEncodingDirection": phase}),
                                       [{} for _ in vecs])
    for i, ds in enumerate(datasets):
        v = i // 4
        b = 0 if v == 0 else 1000 + (1_000_000_000 if v == 4 else 0)
        ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x39, "IS", [b, 8, 0, 0])
        block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        for element, value in zip((0xBB, 0xBC, 0xBD), vecs[v], strict=True):
            block.add_new(element, "DS", str(value))
    files = write_datasets(datasets, tmp_path / "src")
    theirs, ours = compare(dcm2niix, files, tmp_path)
    assert ours[0].with_suffix(".bval").read_text().split() == ["0", "1000", "1000", "1000", "1000"]
    for ext in (".bval", ".bvec"):
        np.testing.assert_allclose(np.loadtxt(ours[0].with_suffix(ext)), np.loadtxt(theirs[0].with_suffix(ext)),
                                   atol=1e-5, err_msg=ext)


def test_a_ge_group_delay_series_gets_the_true_volume_spacing_as_tr(dcm2niix: str, tmp_path: Path) -> None:
    import json

    datasets = make_multivolume_series(STUDY, SeriesSpec(series_number=16, series_description="fmri_epirt", n_slices=4,
                                                         extra={"Manufacturer": "GE MEDICAL SYSTEMS",
                                                                "RepetitionTime": 2000.0}),
                                       [{"TemporalPositionIdentifier": t + 1} for t in range(3)])
    for ds in datasets:
        ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x7C, "FL", 0.5)  # group delay, s
    theirs, ours = compare(dcm2niix, write_datasets(datasets, tmp_path / "src"), tmp_path)
    assert _nii(ours[0]).header.get_zooms()[3] == _nii(theirs[0]).header.get_zooms()[3] == np.float32(2.5)
    ref = json.loads(theirs[0].with_suffix(".json").read_text())["RepetitionTime"]
    assert json.loads(ours[0].with_suffix(".json").read_text())["RepetitionTime"] == ref == 2.5


def test_canon_b0_volumes_without_a_b_value_count_as_b0_and_the_series_keeps_its_bvals(dcm2niix: str,
                                                                                       tmp_path: Path) -> None:
    # Canon/Toshiba store no diffusion attribute on their b0 images. Debian's dcm2niix then writes no bval/bvec
    # for the series at all; the truth is b=0 with no direction for those volumes (hand-computed here).
    volumes: list[dict[str, Any]] = [{}]
    volumes += [{"DiffusionBValue": 1000.0, "DiffusionGradientOrientation": list(v)} for v in DWI_VECS]
    files = write_datasets(make_multivolume_series(STUDY, SeriesSpec(series_number=14, series_description="canon_dwi",
                                                                     n_slices=4), volumes), tmp_path / "src")
    theirs, ours = compare(dcm2niix, files, tmp_path)  # the voxels and the 4D order still match dcm2niix
    assert not theirs[0].with_suffix(".bval").exists()
    assert ours[0].with_suffix(".bval").read_text().split() == ["0", "1000", "1000", "1000"]
    bvec = np.loadtxt(ours[0].with_suffix(".bvec"))
    assert bvec.shape == (3, 4) and np.allclose(bvec[:, 0], 0) and np.allclose(np.abs(bvec[:, 1:]).sum(axis=0), 1)


def test_slice_timing_and_phase_encoding_axis_are_written_as_dcm2niix_writes_them(dcm2niix: str,
                                                                                  tmp_path: Path) -> None:
    import json

    datasets = make_mosaic_series(STUDY, SeriesSpec(n_slices=6, rows=16, cols=16, series_description="bold_siemens",
                                                    extra={"InPlanePhaseEncodingDirection": "COL"}), n_volumes=2)
    for ds in datasets:  # Siemens MosaicRefAcqTimes (ms) of the six tiles, interleaved
        block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        block.add_new(0x29, "FD", [0.0, 500.0, 100.0, 600.0, 200.0, 700.0])
    files = write_datasets(datasets, tmp_path / "src")
    theirs, ours = compare(dcm2niix, files, tmp_path)
    ref = json.loads(theirs[0].with_suffix(".json").read_text())
    mine = json.loads(ours[0].with_suffix(".json").read_text())
    for key in ("SliceTiming", "PhaseEncodingAxis", "InPlanePhaseEncodingDirectionDICOM"):
        assert key in ref, f"dcm2niix no longer writes {key}"
        assert mine.get(key) == (pytest.approx(ref[key]) if key == "SliceTiming" else ref[key]), key


def test_diffusion_volumes_whose_slices_disagree_are_refused_with_the_reason(tmp_path: Path) -> None:
    # Instance numbers shuffled across the whole series: ordering by them (as dcm2niix does) would build volumes
    # whose slices come from different gradient directions. The node refuses and says why; nothing is written.
    vecs = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    volumes = [{"DiffusionBValue": 0.0 if v == 0 else 1000.0,
                "DiffusionGradientOrientation": [float(c) for c in vec]} for v, vec in enumerate(vecs)]
    datasets = make_multivolume_series(STUDY, SeriesSpec(series_number=12, series_description="dwi_shuffled",
                                                         shuffle_instance_numbers=True), volumes)
    files = write_datasets(datasets, tmp_path / "src")
    outcome = convert_series(files, tmp_path / "study" / "nifti", NiftiOptions(compress=False))
    assert outcome.files == ()
    assert outcome.skipped_reason is not None and "DIFFUSION_MISMATCH" in outcome.skipped_reason, outcome


def _pepolar(mode: int | None, phase: str, tmp_path: Path) -> list[Path]:
    """A GE epi_pepolar run of four volumes: user data 12 (0019,10B3) says which were acquired reversed."""
    datasets = make_multivolume_series(STUDY, SeriesSpec(series_number=17, series_description="pepolar", n_slices=3,
                                                         rows=6, cols=8,
                                                         extra={"Manufacturer": "GE MEDICAL SYSTEMS",
                                                                "InPlanePhaseEncodingDirection": phase}),
                                       [{"TemporalPositionIdentifier": t + 1} for t in range(4)])
    for ds in datasets:
        block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        block.add_new(0x9C, "LO", "epi_pepolar")
        if mode is not None:
            block.add_new(0xB3, "DS", str(mode))
    return write_datasets(datasets, tmp_path / "src")


@pytest.mark.parametrize("mode", [None, 1, 2, 3, 4])
def test_ge_reverse_polarity_volumes_are_flipped_and_split_as_dcm2niix_does(dcm2niix: str, tmp_path: Path,
                                                                            mode: int | None) -> None:
    files = _pepolar(mode, "COL", tmp_path)
    theirs = {p.stem: p for p in run_dcm2niix(dcm2niix, tmp_path / "src", tmp_path / "dcm2niix")}
    outcome = convert_series(files, tmp_path / "study" / "nifti", NiftiOptions(compress=False))
    ours = {Path(f).stem: tmp_path / "study" / f for f in outcome.files if f.endswith(".nii")}
    # dcm2niix writes the reversed half of a mixed run as series number + 1000; the node as <name>_rev.
    expected = {"17_pepolar": "17_pepolar", "17_pepolar_rev": "1017_pepolar"} if mode in (2, 3) else {
        "17_pepolar": "17_pepolar"}
    assert sorted(ours) == sorted(expected) and sorted(theirs) == sorted(expected.values()), (ours, theirs)
    for our_name, their_name in expected.items():
        a, b = _nii(theirs[their_name]), _nii(ours[our_name])
        assert a.shape == b.shape
        assert_same_affine(a.affine, b.affine)
        np.testing.assert_array_equal(a.get_fdata(), b.get_fdata(), err_msg=our_name)
    assert any(w.startswith("PEPOLAR") for w in outcome.warnings) == (mode is not None)
    # The truth by hand, beside dcm2niix: the reversed volumes are the stored ones upside down (nifti j reversed).
    plain = _plain_pepolar("COL", tmp_path)
    data = {name: _nii(path).get_fdata() for name, path in ours.items()}
    if mode == 1:
        np.testing.assert_array_equal(data["17_pepolar"], plain[:, ::-1])
    elif mode in (2, 3):
        back, ahead = (slice(0, None, 2), slice(1, None, 2)) if mode == 2 else (slice(1, None, 2), slice(0, None, 2))
        np.testing.assert_array_equal(data["17_pepolar_rev"], plain[..., back][:, ::-1])
        np.testing.assert_array_equal(data["17_pepolar"], plain[..., ahead])
    else:
        np.testing.assert_array_equal(data["17_pepolar"], plain)


def _plain_pepolar(phase: str, tmp_path: Path) -> np.ndarray:
    """The same run converted as a plain EPI (no pulse sequence name): the images as stored."""
    files = _pepolar(None, phase, tmp_path / "plain")
    for path in files:
        ds = pydicom.dcmread(path)
        del ds[0x0019109C]
        ds.save_as(path)
    outcome = convert_series(files, tmp_path / "plain" / "nifti", NiftiOptions(compress=False))
    (name,) = [f for f in outcome.files if f.endswith(".nii")]
    return _nii(tmp_path / "plain" / name).get_fdata()


def test_reverse_polarity_along_the_rows_is_split_but_never_flipped_across_the_wrong_axis(tmp_path: Path) -> None:
    files = _pepolar(2, "ROW", tmp_path)
    outcome = convert_series(files, tmp_path / "study" / "nifti", NiftiOptions(compress=False))
    ours = {Path(f).stem: _nii(tmp_path / "study" / f).get_fdata() for f in outcome.files if f.endswith(".nii")}
    assert sorted(ours) == ["17_pepolar", "17_pepolar_rev"]
    plain = _plain_pepolar("ROW", tmp_path)
    np.testing.assert_array_equal(ours["17_pepolar_rev"], plain[..., 0::2])  # as stored
    np.testing.assert_array_equal(ours["17_pepolar"], plain[..., 1::2])
    assert any(w.startswith("PEPOLAR_UNFLIPPED") for w in outcome.warnings)
