"""Series to NIfTI (SimpleITK): dcm2niix-style volumes, lossless scaling, RAS header, sidecars, bval/bvec.

Slightly over our ~450-line norm: the per-series policy (what to write, skip or warn about) reads best
as one sequence next to the writer it drives.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from node.config.model import NiftiOptions
from node.process import previews as previews_mod
from node.process import qc as qc_mod
from node.process.naming import slug, unique_name
from node.process.nifti import sidecar
from node.process.nifti.volumes import (
    PROJECTION_MODALITIES,
    Group,
    NotAnImage,
    SliceInfo,
    Stack,
    looks_like_localizer,
    read_header,
    read_pixels,
    split_series,
    stack_group,
)
from node.process.outputs import SeriesOutcome

log = logging.getLogger(__name__)

# Errors that bad input data (files, pixel data, codecs) can raise; anything else is a bug and propagates.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, KeyError, IndexError, NotImplementedError, RuntimeError, InvalidDicomError, EOFError,
    struct.error, ZeroDivisionError, OverflowError, MemoryError,
)
_TEMPLATE_FIELD = re.compile(r"<([A-Za-z0-9]+)>")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def render_name(template: str, ds: pydicom.Dataset) -> str:
    """Fill <Keyword> fields of the template from a header; missing values become empty strings."""

    def field(match: re.Match[str]) -> str:
        value = ds.get(match.group(1))
        if value is None:
            return ""
        if isinstance(value, pydicom.multival.MultiValue):
            return "_".join(str(v) for v in value)
        return str(value)

    return _TEMPLATE_FIELD.sub(field, template)


_OUTPUT_EXTS = (".nii.gz", ".nii", ".json", ".bval", ".bvec", ".npz", ".tmp.nii")


@dataclass
class _Result:
    files: list[str]
    warnings: list[str]
    skipped: list[str]
    errors: list[str]
    details: dict[str, Any]
    volumes: int = 0
    previews: list[str] = field(default_factory=list)
    qc: list[str] = field(default_factory=list)


def convert_study(series_files: Mapping[str, Sequence[Path]], out_dir: Path,
                  options: NiftiOptions | None = None, qc: qc_mod.QcConfig | None = None) -> dict[str, SeriesOutcome]:
    """Convert every series of a study into out_dir; names are unique across the study. With qc, each volume
    also gets its PNG preview in out_dir's sibling previews/ and its pixel quality flags, from the same array."""
    taken: set[str] = set()
    results: dict[str, SeriesOutcome] = {}
    for series_uid, files in series_files.items():
        outcome = convert_series(files, out_dir, options, taken, qc)
        if outcome.series_uid != series_uid:
            outcome = dataclasses.replace(outcome, series_uid=series_uid)
        results[series_uid] = outcome
    return results


def convert_series(files: Sequence[Path], out_dir: Path, options: NiftiOptions | None = None,
                   taken_names: set[str] | None = None, qc: qc_mod.QcConfig | None = None) -> SeriesOutcome:
    """Convert one series into NIfTI files in out_dir; bad input becomes error/skipped_reason, never an exception.

    Returned file paths are relative to out_dir's parent (e.g. "nifti/3_t1_tse_tra.nii.gz").
    """
    options = options or NiftiOptions()
    taken = taken_names if taken_names is not None else {_stem(p.name) for p in _existing(out_dir)}
    res = _Result([], [], [], [], {})
    series_uid = ""
    slices: list[SliceInfo] = []
    unreadable: list[str] = []
    not_images: dict[str, int] = {}
    for path in files:
        try:
            slices.extend(read_header(Path(path)))
        except NotAnImage as exc:
            not_images[exc.kind] = not_images.get(exc.kind, 0) + 1
        except DATA_ERRORS as exc:
            unreadable.append(f"{Path(path).name}: {exc}")
            log.warning("nifti: skipping unreadable file %s: %s", Path(path).name, exc)
    if unreadable:
        res.warnings.append(f"UNREADABLE: {len(unreadable)} file(s) could not be read as DICOM images "
                            f"(first: {unreadable[0]})")
    if not_images:
        kinds = ", ".join(sorted(not_images))
        res.skipped.append(f"NON_IMAGE: {sum(not_images.values())} object(s) without pixels ({kinds}): nothing to "
                           "convert (reports, presentation states and key objects stay in the workbook)")
    if slices:
        series_uid = str(slices[0].header.get("SeriesInstanceUID", ""))
    if not slices and not_images and not unreadable:
        return SeriesOutcome(series_uid, warnings=tuple(res.warnings), skipped_reason=res.skipped[0])
    if not slices:
        reason = "NO_IMAGES: no readable DICOM image in the series"
        return SeriesOutcome(series_uid, warnings=tuple(res.warnings), skipped_reason=None if unreadable else reason,
                             error=reason if unreadable else None)
    try:
        _convert(slices, out_dir, options, taken, res, qc)
    except DATA_ERRORS as exc:
        log.warning("nifti: series %s failed: %s", series_uid, exc, exc_info=True)
        res.errors.append(f"CONVERSION_FAILED: {type(exc).__name__}: {exc}")
    written = len(res.files)
    error = "; ".join(res.errors) if res.errors and not written else None
    if res.errors and written:
        res.warnings.extend(res.errors)
    skipped = "; ".join(res.skipped) if not written and not error else None
    if res.skipped and written:
        res.warnings.extend(res.skipped)
    log.info("nifti: series %s -> %d NIfTI file(s), %d warning(s)%s", series_uid, res.volumes, len(res.warnings),
             f", skipped ({skipped})" if skipped else "")
    return SeriesOutcome(series_uid, volumes=res.volumes, files=tuple(res.files), warnings=tuple(res.warnings),
                         skipped_reason=skipped, error=error, details=res.details, previews=tuple(res.previews),
                         qc_flags=tuple(dict.fromkeys(res.qc)))


def _existing(out_dir: Path) -> list[Path]:
    return list(out_dir.iterdir()) if out_dir.is_dir() else []


def _stem(filename: str) -> str:
    return next((filename.removesuffix(ext) for ext in _OUTPUT_EXTS if filename.endswith(ext)), filename)


def _convert(slices: list[SliceInfo], out_dir: Path, options: NiftiOptions, taken: set[str], res: _Result,
             qc: qc_mod.QcConfig | None = None) -> None:
    first = min(slices, key=lambda s: s.instance_number)
    description = f"{first.header.get('SeriesDescription', '')} {first.header.get('ProtocolName', '')}"
    if any(s.samples != 1 for s in slices):
        res.skipped.append("COLOR: colour (SamplesPerPixel > 1) images are not converted to NIfTI")
        return
    needed = sum(s.rows * s.cols for s in slices) * 4  # decoded as 32-bit values, before anything is read
    if needed > options.max_series_mb << 20:
        res.skipped.append(f"TOO_LARGE: the series would take {needed >> 20} MiB of memory decoded "
                           f"(nifti.max_series_mb {options.max_series_mb})")
        return
    localizer = looks_like_localizer(slices, description)
    if localizer and options.localizer == "skip":
        res.skipped.append("LOCALIZER: localizer/scout images not stacked (nifti.localizer: skip)")
        return
    groups, splits = split_series(slices)
    res.details["splits"] = [str(s) for s in splits]
    for split in splits:
        if split.code in ("SPLIT_ORIENTATION", "SPLIT_DIMENSIONS") and not localizer:
            res.warnings.append(str(split))
    base = render_name(options.name_template, first.header)
    shapes: dict[str, list[int]] = {}
    res.details["shapes"] = shapes
    for group in _projection_groups(groups, res.skipped):
        try:
            stack = stack_group(group, options.position_tolerance_mm, options.spacing_tolerance)
        except DATA_ERRORS as exc:
            res.errors.append(f"STACK_FAILED{group.suffix}: {exc}")
            continue
        # Several files from one series: say which one each note is about.
        label = f" [{group.suffix.lstrip('_')}]" if len(groups) > 1 and group.suffix else ""
        notes: list[str] = []
        if not _admit(stack, options, res, notes, label):
            res.warnings.extend(n + label for n in notes)
            continue
        for part, part_suffix in _parts(stack, notes):
            name = unique_name(slug(base + group.suffix + part_suffix, options.max_name_len), taken)
            try:
                written = _write_stack(part, out_dir, name, options, res, notes, qc)
            except DATA_ERRORS as exc:
                log.warning("nifti: writing %s failed: %s", name, exc, exc_info=True)
                res.errors.append(f"WRITE_FAILED: {name}: {type(exc).__name__}: {exc}")
                for ext in _OUTPUT_EXTS:  # no half-written file set is left behind
                    (out_dir / f"{name}{ext}").unlink(missing_ok=True)
                (out_dir.parent / "previews" / f"{name}.png").unlink(missing_ok=True)
                continue
            shapes[written] = list(_shape(part))
            res.volumes += 1
        res.warnings.extend(n + label for n in notes)


def _isotropic(s: SliceInfo) -> bool:
    """A derived trace/ADC image of a diffusion series: a b-value but no gradient direction."""
    return bool(s.bvalue) and (s.bvec is None or all(abs(c) < 1e-6 for c in s.bvec))


def _parts(stack: Stack, notes: list[str]) -> list[tuple[Stack, str]]:
    """The files one stack becomes: its reverse-polarity volumes apart, then its derived diffusion volumes apart."""
    return [(diffusion, polarity_suffix + diffusion_suffix)
            for polarity, polarity_suffix in _pepolar_parts(stack, notes)
            for diffusion, diffusion_suffix in _diffusion_parts(polarity, notes)]


# GE epi_pepolar user data 12 -> which volume indexes were acquired with the phase encoding reversed.
_PEPOLAR_REVERSED: dict[int, Callable[[int], bool]] = {1: lambda t: True, 2: lambda t: t % 2 == 0, 3: lambda t: t % 2 == 1}


def _pepolar_parts(stack: Stack, notes: list[str]) -> list[tuple[Stack, str]]:
    """GE reverse-polarity EPI as dcm2niix writes it: the reversed volumes are turned the right way up (their rows
    reversed) and, when the series mixes both polarities, written apart with suffix _rev (dcm2niix: series number
    + 1000). Modes 4 and 5 were flipped by the scanner and stay one 4D, as in dcm2niix. With the phase encoded
    along the rows nothing is flipped: Debian's dcm2niix then flips the rows anyway, which would move the image
    across the wrong axis; the volumes are split and the note says they were left as stored."""
    mode = stack.first.ge_pepolar
    if not mode:
        return [(stack, "")]
    reversed_ = _PEPOLAR_REVERSED.get(mode)
    if reversed_ is None:
        notes.append(f"PEPOLAR: GE reverse-polarity EPI (user data 12 = {mode}): volumes alternate the phase-encoding "
                     "polarity, already flipped by the scanner; kept in one 4D as dcm2niix does")
        return [(stack, "")]
    flip = stack.first.phase_axis != "ROW"
    back = [t for t in range(len(stack.volumes)) if reversed_(t)]
    ahead = [t for t in range(len(stack.volumes)) if not reversed_(t)]
    turned = [[dataclasses.replace(s, reverse_rows=flip) for s in stack.volumes[t]] for t in back]
    how = "rows reversed to undo the reversed phase encoding" if flip else (
        "left as stored (phase encoded along the rows: the flip dcm2niix applies would be across the wrong axis)")
    notes.append(f"PEPOLAR{'' if flip else '_UNFLIPPED'}: GE reverse-polarity EPI: {len(back)} of {len(stack.volumes)} "
                 f"volume(s) acquired with the phase encoding reversed, {how}"
                 + ("; written apart as _rev" if ahead else ""))
    if not ahead:
        return [(dataclasses.replace(stack, volumes=turned), "")]
    return [(dataclasses.replace(stack, volumes=[stack.volumes[t] for t in ahead]), ""),
            (dataclasses.replace(stack, volumes=turned), "_rev")]


def _diffusion_parts(stack: Stack, notes: list[str]) -> list[tuple[Stack, str]]:
    """A DWI series holding derived isotropic (trace/ADC) volumes beside its directional ones: the isotropic ones
    go to a file of their own (suffix _ADC), as dcm2niix does, so the DWI 4D holds only acquired directions."""
    firsts = [vol[0] for vol in stack.volumes]
    iso = [i for i, s in enumerate(firsts) if _isotropic(s)]
    directional = [i for i, s in enumerate(firsts) if s.bvalue is not None and not _isotropic(s)]
    if not iso or not any(firsts[i].bvalue for i in directional):
        return [(stack, "")]
    notes.append(f"DIFFUSION_TRACE: {len(iso)} derived isotropic (trace/ADC) volume(s) written apart as _ADC")
    keep = [stack.volumes[i] for i in range(len(firsts)) if i not in iso]
    return [(dataclasses.replace(stack, volumes=keep), ""),
            (dataclasses.replace(stack, volumes=[stack.volumes[i] for i in iso]), "_ADC")]


def _bvalues(stack: Stack) -> list[tuple[float, tuple[float, float, float] | None]] | None:
    """The file's (b-value, direction) per volume, or None when it is not a diffusion series.

    A diffusion series has a b-value above 0 with a gradient direction somewhere, or says it is one (ImageType
    DIFFUSION, a Siemens ep_b sequence: a lone b0); all-zero b-values on a plain Philips image are not diffusion.
    A volume with no diffusion attribute at all beside diffusion-weighted ones is a b0 (Canon/Toshiba b0 images
    carry no b-value); a volume with a direction but no b-value is not guessed: no bval/bvec then."""
    firsts = [vol[0] for vol in stack.volumes]
    weighted = any(s.bvalue and s.bvec is not None and any(abs(c) > 1e-6 for c in s.bvec) for s in firsts)
    declared = "DIFFUSION" in firsts[0].image_type or bool(re.search(r"ep_b\d", str(firsts[0].header.get(
        "SequenceName", "")))) if not weighted and all(s.bvalue is not None for s in firsts) else False
    if not (weighted or declared):
        return None
    out: list[tuple[float, tuple[float, float, float] | None]] = []
    for s in firsts:
        if s.bvalue is None and s.bvec is None:
            out.append((0.0, (0.0, 0.0, 0.0)))
        elif s.bvalue is None:
            return None
        else:
            out.append((float(s.bvalue), s.bvec))
    return out


def _projection_groups(groups: list[Group], refused: list[str] | None = None) -> list[Group]:
    """Images without patient geometry are never stacked. Projection images (radiographs: each one a picture of
    its own) become one file each; several cross-sectional images without a position (an MR mosaic in a layout
    the node does not read, a vendor export that dropped the geometry) are refused with NO_POSITION: writing them
    as a pile of unrelated 2D files would be a silent fake."""
    out: list[Group] = []
    for g in groups:
        if g.slices[0].iop is None or any(s.ipp is None for s in g.slices):
            if len(g.slices) == 1 or (len({s.path for s in g.slices}) == 1 and g.slices[0].frame is not None):
                out.append(g)
            elif g.slices[0].modality in PROJECTION_MODALITIES:
                out.extend(Group([s], f"{g.suffix}_i{s.instance_number:05d}") for s in g.slices)
            elif refused is not None:
                refused.append(f"NO_POSITION: {len(g.slices)} {g.slices[0].modality} images without "
                               "ImagePositionPatient/ImageOrientationPatient cannot be stacked into a volume; "
                               "not written (a mosaic or export layout the node does not read)")
        else:
            out.append(g)
    return out


def _admit(stack: Stack, options: NiftiOptions, res: _Result, notes: list[str], label: str) -> bool:
    """Apply the configured policies; record every flag and every refusal with its reason code."""
    for issue in stack.issues:
        if issue.code not in ("MISSING_SLICE", "UNEVEN_SPACING", "INCOMPLETE_4D"):
            notes.append(str(issue))
    errors = stack.geometry_errors
    if errors:
        if options.on_geometry_error == "skip":
            res.skipped.extend(f"{e} -- not written{label}" for e in errors)
            return False
        notes.extend(f"{e} -- written anyway" for e in errors)
    n_pos = len(stack.volumes[0])
    if stack.projection or (stack.first.modality in PROJECTION_MODALITIES and n_pos == 1):
        if options.projection == "skip":
            res.skipped.append(f"PROJECTION: 2D projection image not written (nifti.projection: skip){label}")
            return False
    elif n_pos == 1 and options.single_slice == "skip":
        res.skipped.append(f"SINGLE_SLICE: single-slice volume not written (nifti.single_slice: skip){label}")
        return False
    return True


def _shape(stack: Stack) -> tuple[int, ...]:
    s = stack.first
    base = (s.cols, s.rows, len(stack.volumes[0]))
    return (*base, len(stack.volumes)) if len(stack.volumes) > 1 else base


def geometry(stack: Stack) -> tuple[np.ndarray, np.ndarray]:
    """The written image's voxel-to-LPS matrix (3x3, spacing included) and origin, dcm2niix layout.

    Rows are stored bottom-up (dcm2niix flips the DICOM row order), so the j axis runs against the
    DICOM column direction and the origin is the first slice's last row.
    """
    s = stack.first
    dy, dx = s.pixel_spacing
    ipp = stack.corner if stack.corner is not None else np.asarray(s.ipp, dtype=float)
    if not stack.flip_rows:
        return np.column_stack([stack.row * dx, stack.col * dy, stack.step]), ipp
    mat = np.column_stack([stack.row * dx, -stack.col * dy, stack.step])
    origin = ipp + stack.col * dy * (s.rows - 1)
    return mat, origin


def closest_canonical(data: np.ndarray, mat: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permute/flip voxel axes so they run as close as possible to R, A, S (voxel values untouched).

    dcm2niix does this for 3D acquisitions (MRAcquisitionType 3D): a sagittal MPRAGE comes out RAS.
    data is [T?, Z, Y, X]; mat/origin are the voxel-to-LPS matrix and origin; all three are returned updated.
    """
    ras = _LPS_TO_RAS @ mat
    world_of: dict[int, int] = {}
    for axis in sorted(range(3), key=lambda a: -float(np.max(np.abs(ras[:, a])))):
        world_of[axis] = max((w for w in range(3) if w not in world_of.values()), key=lambda w: abs(ras[w, axis]))
    mat, origin = mat.copy(), origin.copy()
    spatial = data.ndim - 3  # numpy axis of voxel axis a is data.ndim - 1 - a
    for axis, world in world_of.items():
        if ras[world, axis] < 0:
            data = np.flip(data, axis=data.ndim - 1 - axis)
            origin = origin + mat[:, axis] * (data.shape[data.ndim - 1 - axis] - 1)
            mat[:, axis] = -mat[:, axis]
    order = [next(a for a, w in world_of.items() if w == target) for target in range(3)]  # new axis -> old axis
    axes = list(range(spatial)) + [data.ndim - 1 - order[b] for b in (2, 1, 0)]
    return data.transpose(axes), mat[:, order], origin


def _scaled(stack: Stack, notes: list[str], philips: str = "precise", extra: dict[str, Any] | None = None) -> np.ndarray:
    """Voxel array [T?, Z, Y, X] after RescaleSlope/Intercept: integer when exact, float32 otherwise.

    Philips images with a private scale slope SS get, like dcm2niix's default (-p y), the "precise" floating-point
    values (stored x RS + RI) / (RS x SS) unless nifti.philips_scaling is display."""
    slices = [s for vol in stack.volumes for s in vol]
    n_t, n_z = len(stack.volumes), len(stack.volumes[0])
    cache: dict[Path, np.ndarray] = {}
    first_px = read_pixels(slices[0], cache)
    # Native byte order: big-endian sources must not leak their byte order into later reinterpreting views.
    raw = np.empty((len(slices), *first_px.shape), dtype=first_px.dtype.newbyteorder("="))
    for i, s in enumerate(slices):
        px = first_px if i == 0 else read_pixels(s, cache)
        if px.shape != first_px.shape:
            raise ValueError(f"image {s.sop_uid} has shape {px.shape}, expected {first_px.shape}")
        raw[i] = px[::-1] if stack.flip_rows else px  # dcm2niix row order (see geometry())
    cache.clear()
    slopes = np.array([s.slope for s in slices])
    inters = np.array([s.intercept for s in slices])
    ss = [s.philips_scale_slope for s in slices]
    if philips == "precise" and all(v is not None for v in ss):
        scale = np.array([float(v or 1.0) for v in ss])
        out = np.empty(raw.shape, dtype=np.float32)
        for i in range(len(slices)):
            out[i] = (raw[i].astype(np.float64) * slopes[i] + inters[i]) / (slopes[i] * scale[i])
        notes.append("PHILIPS_PRECISE: Philips floating-point values (stored x RS + RI) / (RS x SS), as dcm2niix "
                     "writes them by default (nifti.philips_scaling: display keeps the displayed values)")
        if extra is not None:
            extra.update(PhilipsRescaleSlope=float(slopes[0]), PhilipsRescaleIntercept=float(inters[0]),
                         PhilipsScaleSlope=float(scale[0]), UsePhilipsFloatNotDisplayScaling=1)
        shape = (n_t, n_z, *out.shape[1:]) if n_t > 1 else (n_z, *out.shape[1:])
        return out.reshape(shape)
    uniform = bool(np.all(slopes == slopes[0]) and np.all(inters == inters[0]))
    if not uniform:
        notes.append("RESCALE_VARIES: RescaleSlope/Intercept differ between images; written as float32")
    if uniform and float(slopes[0]).is_integer() and float(inters[0]).is_integer() and raw.dtype.kind in "iu":
        out = _integer_scaled(raw, int(slopes[0]), int(inters[0]))
    else:
        out = np.empty(raw.shape, dtype=np.float32)
        for i in range(len(slices)):
            # float64 per slice, then one rounding to float32: no truncation, no slope/intercept drift.
            out[i] = raw[i].astype(np.float64) * slopes[i] + inters[i]
    shape = (n_t, n_z, *out.shape[1:]) if n_t > 1 else (n_z, *out.shape[1:])
    return out.reshape(shape)


def _integer_scaled(raw: np.ndarray, slope: int, inter: int) -> np.ndarray:
    """Apply an integer slope/intercept exactly, in the smallest of int16/uint16/int32/int64 that holds the result.

    raw may be reused for the result (callers pass a buffer they own).
    """
    if slope == 1 and inter == 0 and raw.dtype in (np.uint8, np.int8, np.int16, np.uint16, np.int32):
        return raw
    lo, hi = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
    lo, hi = sorted((lo * slope + inter, hi * slope + inter))
    dtype: type[np.integer[Any]] = next(
        (t for t in (np.int16, np.uint16, np.int32) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max), np.int64
    )
    info = np.iinfo(dtype)
    raw_lo, raw_hi = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
    scaled_lo, scaled_hi = sorted((raw_lo * slope, raw_hi * slope))
    if info.min <= min(raw_lo, scaled_lo) and max(raw_hi, scaled_hi) <= info.max:
        # Every intermediate fits the output type: reinterpret (same width) or cast once, scale in place.
        # raw is this module's own buffer, so reusing it saves a volume-sized copy (the common CT case).
        out = raw.view(dtype) if raw.dtype.itemsize == np.dtype(dtype).itemsize else raw.astype(dtype)
        if slope != 1:
            out *= dtype(slope)
        if inter:
            out += dtype(inter)
        return out
    out = np.empty(raw.shape, dtype=dtype)
    for i in range(raw.shape[0]):
        out[i] = raw[i].astype(np.int64) * slope + inter
    return out


def _write_stack(stack: Stack, out_dir: Path, name: str, options: NiftiOptions, res: _Result,
                 notes: list[str], qc: qc_mod.QcConfig | None = None) -> str:
    import SimpleITK as sitk

    extra: dict[str, Any] = {}
    data = _scaled(stack, notes, options.philips_scaling, extra)
    mat, origin = geometry(stack)
    first = stack.first
    if (str(first.header.get("MRAcquisitionType", "")).upper() == "3D" and not stack.tilt_deg
            and not stack.projection and len(stack.volumes[0]) > 1):
        data, mat, origin = closest_canonical(data, mat, origin)
    spacing = np.linalg.norm(mat, axis=0)
    direction = mat / spacing
    if stack.tilt_deg:
        extra["GantryTiltSheared"] = round(stack.tilt_deg, 4)
    if stack.tilt_deg and options.resample_tilt:
        data, direction, spacing, origin = _resample_tilt(data, direction, spacing, origin, stack, sitk)
        notes.append("TILT_RESAMPLED: sheared slices resampled onto an orthogonal grid")
        extra["GantryTiltResampled"] = True
    shown_as = first.photometric  # how the written values display (after an inversion: as MONOCHROME2)
    if first.photometric == "MONOCHROME1":
        if options.invert_monochrome1:
            shown_as = "MONOCHROME2"
            # Range-preserving inversion: the lowest stored value becomes the highest, so higher = brighter.
            lo, hi = data.min(), data.max()
            data = (hi + lo) - data
            extra["MonochromeInverted"] = True
            notes.append("MONOCHROME1: values inverted (nifti.invert_monochrome1): higher = brighter, as displayed")
        else:
            notes.append("MONOCHROME1: stored values kept, as dcm2niix does (higher = darker on display)")
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if options.compress else ".nii"
    path = out_dir / f"{name}{ext}"
    sheared = not _is_orthogonal(direction)
    # ITK only holds rotations: a sheared stack goes in with its slice normal, the exact sform is patched after.
    itk_dir, itk_spacing = direction.copy(), spacing.copy()
    if sheared:
        itk_dir[:, 2] = stack.normal
        itk_spacing[2] = stack.slice_spacing
    if data.ndim == 4:
        tr = (first.repetition_time or 0.0) / 1000.0 + first.ge_group_delay
        vols = [_image(sitk, data[t], itk_dir, itk_spacing, origin) for t in range(data.shape[0])]
        img = sitk.JoinSeries(vols, 0.0, tr if tr > 0 else 1.0)
    else:
        img = _image(sitk, data, itk_dir, itk_spacing, origin)
    rel = []
    if options.write_nifti:
        if sheared:
            _write_sheared(sitk, img, path, direction * spacing, origin, options)
        else:
            sitk.WriteImage(img, str(path), useCompression=options.compress, compressionLevel=options.compression_level)
        rel.append(f"{out_dir.name}/{path.name}")
    stem = out_dir / name
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ (direction * spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    if options.sidecar:
        iop = first.iop
        meta = sidecar.build_sidecar(first.header, iop=iop, slice_spacing=float(spacing[2]), extra=extra,
                                     n_slices=len(stack.volumes[0]))
        if first.ge_group_delay and first.repetition_time:
            # GE group delay: the volumes are TR + delay apart, and that is the TR a user needs (as dcm2niix).
            meta["RepetitionTime"] = round(first.repetition_time / 1000.0 + first.ge_group_delay, 9)
        # Enhanced multi-frame files keep TR, TE and flip angle in functional groups, not at the top level.
        for key, value, scale in (("RepetitionTime", first.repetition_time, 1000.0), ("EchoTime", first.echo_time, 1000.0),
                                  ("FlipAngle", first.flip_angle, 1.0)):
            if key not in meta and value:
                meta[key] = round(float(value) / scale, 9)
        if notes:
            meta["DicomNodeWarnings"] = list(notes)
        sidecar.write_json(stem.with_name(name + ".json"), meta)
        rel.append(f"{out_dir.name}/{name}.json")
    diffusion = _bvalues(stack)
    if diffusion is not None:  # dcm2niix writes them for a lone diffusion volume too
        vecs = sidecar.fsl_bvecs([v for _, v in diffusion], direction, affine)
        sidecar.write_bval_bvec(stem, [b for b, _ in diffusion], vecs)
        rel += [f"{out_dir.name}/{name}.bval", f"{out_dir.name}/{name}.bvec"]
    if options.npz:
        np.savez_compressed(stem.with_name(name + ".npz"), data=data.astype(np.float32, copy=False), affine=affine,
                            spacing=spacing)
        rel.append(f"{out_dir.name}/{name}.npz")
    if qc is not None:
        _look(data, direction, spacing, first, shown_as, out_dir.parent / "previews" / f"{name}.png", qc, res)
    res.files.extend(rel)
    return rel[0]


def _look(data: np.ndarray, direction: np.ndarray, spacing: np.ndarray, first: SliceInfo, photometric: str,
          png: Path, qc: qc_mod.QcConfig, res: _Result) -> None:
    """Preview and pixel QC from the array just written: the pixel data is never read a second time."""
    modality = str(first.header.get("Modality", "") or "")
    if qc.enabled:
        res.qc.extend(qc_mod.pixel_flags(data, modality, photometric, qc.for_modality(modality)))
    if qc.previews:
        previews_mod.write(png, data, direction, spacing, photometric, first.header)
        res.previews.append(f"{png.parent.name}/{png.name}")


def _is_orthogonal(direction: np.ndarray) -> bool:
    return bool(np.allclose(direction.T @ direction, np.eye(3), atol=1e-6))


def _write_sheared(sitk: Any, img: Any, path: Path, mat: np.ndarray, origin: np.ndarray, options: NiftiOptions) -> None:
    """Write a sheared (gantry-tilted) volume with its exact affine in the sform.

    ITK coerces a non-orthogonal direction to the nearest rotation, which would misplace every slice but
    the first; the qform keeps that rigid approximation, the sform gets the true voxel-to-RAS matrix.
    """
    plain = path.with_name(path.name.removesuffix(".gz") + ".tmp.nii")
    try:
        sitk.WriteImage(img, str(plain), useCompression=False)
        header = bytearray(plain.read_bytes())
        if struct.unpack_from("<i", header, 0)[0] != 348:
            raise ValueError("unexpected NIfTI header written by SimpleITK")
        ras = _LPS_TO_RAS @ np.column_stack([mat, origin])
        struct.pack_into("<12f", header, 280, *(float(v) for v in ras.flatten()))
        struct.pack_into("<h", header, 254, 1)  # NIFTI_XFORM_SCANNER_ANAT
        if options.compress:
            import gzip  # imported here: only tilted CT takes this path

            level = options.compression_level if options.compression_level > 0 else 6
            with gzip.open(path, "wb", compresslevel=level) as fh:
                fh.write(header)
        else:
            path.write_bytes(header)
    finally:
        plain.unlink(missing_ok=True)


def _image(sitk: Any, vol: np.ndarray, direction: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> Any:
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol))
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection([float(v) for v in direction.flatten()])
    return img


def _resample_tilt(data: np.ndarray, direction: np.ndarray, spacing: np.ndarray, origin: np.ndarray,
                   stack: Stack, sitk: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Resample a sheared (gantry-tilted) stack onto the orthogonal grid of its first slice."""
    src = _image(sitk, data if data.ndim == 3 else data[0], direction, spacing, origin)
    ortho = direction.copy()
    ortho[:, 2] = stack.normal
    out_spacing = spacing.copy()
    out_spacing[2] = abs(float(np.dot(direction[:, 2] * spacing[2], stack.normal)))
    # The sheared block spans more in-plane room than its first slice: grow the grid to hold all of it.
    corners = np.array([[i, j, k] for i in (0, data.shape[-1] - 1) for j in (0, data.shape[-2] - 1)
                        for k in (0, data.shape[-3] - 1)], dtype=float)
    world = origin + (corners * spacing) @ direction.T
    local = (world - origin) @ ortho
    lo, hi = local.min(axis=0), local.max(axis=0)
    size = [int(np.ceil((hi[a] - lo[a]) / out_spacing[a])) + 1 for a in range(3)]
    new_origin = origin + ortho @ lo
    fill = float(data.min())
    resampled = []
    for t in range(1 if data.ndim == 3 else data.shape[0]):
        src = _image(sitk, data if data.ndim == 3 else data[t], direction, spacing, origin)
        out = sitk.Resample(src, size, sitk.Transform(), sitk.sitkLinear, [float(v) for v in new_origin],
                            [float(v) for v in out_spacing], [float(v) for v in ortho.flatten()], fill,
                            sitk.sitkFloat32)
        resampled.append(sitk.GetArrayFromImage(out))
    arr = resampled[0] if data.ndim == 3 else np.stack(resampled)
    return arr, ortho, out_spacing, new_origin
