"""Series to volumes: per-slice header records, dcm2niix-style splitting, spatial sorting, geometry checks.

Longer than our ~450-line norm on purpose: reading slice records, splitting and stacking are one
dcm2niix-compatible algorithm whose steps share the SliceInfo record; the pieces only make sense together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.dicom import facts
from node.process.nifti import vendor
from node.process.nifti.headers import read_fast
from node.process.nifti.mosaic import mosaic_layout
from node.process.nifti.values import Values
from node.process.nifti.values import as_int as _int
from node.process.nifti.values import floats as _floats
from node.process.nifti.values import num as _num

log = logging.getLogger(__name__)

PROJECTION_MODALITIES = frozenset({"DX", "CR", "MG", "XA", "RF", "IO", "PX", "RG", "OT", "SC", "XC", "US"})
# Codes that make a volume geometrically untrustworthy (written only with on_geometry_error=write_with_warning).
GEOMETRY_ERRORS = frozenset({"MISSING_SLICE", "UNEVEN_SPACING", "INCOMPLETE_4D", "DIFFUSION_MISMATCH"})


@dataclass(frozen=True)
class Issue:
    """A reason code and its human text, rendered "CODE: text" in outcomes."""

    code: str
    text: str

    def __str__(self) -> str:
        return f"{self.code}: {self.text}"


@dataclass(frozen=True, eq=False)
class SliceInfo:
    """What grouping, sorting and writing need from one image (one file, or one frame of a multi-frame file)."""

    path: Path
    sop_uid: str
    instance_number: int
    modality: str
    rows: int
    cols: int
    iop: tuple[float, ...] | None
    ipp: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float]  # (between rows, between columns), as PixelSpacing
    image_type: tuple[str, ...]
    echo_number: int | None
    echo_time: float | None
    repetition_time: float | None
    flip_angle: float | None
    acquisition_number: int | None
    temporal_position: int | None
    trigger_time: float | None
    coil: str
    protocol: str
    slope: float
    intercept: float
    bvalue: float | None
    bvec: tuple[float, float, float] | None
    gantry_tilt: float
    photometric: str
    frame: int | None = None  # 0-based frame index inside a multi-frame file
    philips_scale_slope: float | None = None  # (2005,100E): the "precise" (floating-point) values' scale
    ge_image_kind: int | None = None  # GE (0043,102F): 0 magnitude, 1 phase, 2 real, 3 imaginary
    ge_group_delay: float = 0.0  # GE (0043,107C), seconds between volumes on top of RepetitionTime
    ge_pepolar: int | None = None  # GE reverse-polarity EPI: which volumes are reversed (vendor.ge_pepolar)
    phase_axis: str = ""  # InPlanePhaseEncodingDirection: ROW or COL
    reverse_rows: bool = False  # a reverse-polarity image, turned the right way up when its pixels are read
    pixel_offset: int | None = None  # byte offset of native pixel data, when the fast reader found it
    pixel_length: int | None = None
    mosaic_side: int = 0  # tiles per side when this record is one tile (frame) of a Siemens mosaic
    stack_normal: tuple[float, float, float] | None = None  # mosaic: slices follow the CSA SliceNormalVector
    bits_allocated: int = 16
    bits_stored: int = 16
    signed: bool = False
    samples: int = 1
    transfer_syntax: str = ""
    parsed: Dataset | None = field(default=None, repr=False)

    @property
    def header(self) -> Dataset:
        """The pydicom header (without pixels), read on first use when the fast reader built this record."""
        if self.parsed is None:
            object.__setattr__(self, "parsed", pydicom.dcmread(self.path, stop_before_pixels=True))
        assert self.parsed is not None
        return self.parsed

    @property
    def normal(self) -> np.ndarray | None:
        if self.iop is None:
            return None
        return np.cross(np.asarray(self.iop[:3]), np.asarray(self.iop[3:]))


def _diffusion(ds: Values) -> tuple[float | None, tuple[float, float, float] | None]:
    """b-value and gradient direction (patient LPS) from the standard attributes, then the vendors' private ones."""
    bvalue = _num(ds, "DiffusionBValue")
    bvec = _floats(ds.get("DiffusionGradientOrientation"), 3)
    for private in (vendor.siemens_diffusion, vendor.ge_diffusion):
        if bvalue is not None and bvec is not None:
            break
        private_b, private_vec = private(ds)
        bvalue = bvalue if bvalue is not None else private_b
        bvec = bvec if bvec is not None else private_vec
    return bvalue, (bvec[0], bvec[1], bvec[2]) if bvec is not None else None


class NotAnImage(ValueError):
    """A DICOM object without pixels (structured report, presentation state, key object...): nothing to convert."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"not an image ({kind})")
        self.kind = kind


def read_header(path: Path) -> list[SliceInfo]:
    """Read one file's header (no pixel data); one SliceInfo per frame. Raises for unreadable/non-image files."""
    fast = read_fast(path)
    frames = _int(fast, "NumberOfFrames") or 1 if fast is not None else 1
    if fast is not None and frames > 1 and "Rows" in fast and "Columns" in fast and "_frames" in fast:
        return _fast_frames(path, fast, frames)
    if fast is not None and "Rows" in fast and "Columns" in fast and frames <= 1:
        if "MOSAIC" not in str(fast.get("ImageType", "")).upper():
            return [_slice(path, fast, fast, None)]
        if fast.get("SiemensCreator0029") == "SIEMENS CSA HEADER" and fast.get("SiemensCSAImageHeader"):
            return _mosaic(path, fast)  # the CSA header came with the fast read: no pydicom parse per file
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise NotAnImage(str(ds.get("Modality") or "") or "no Rows/Columns")
    if "MOSAIC" in [str(v).upper() for v in ds.get("ImageType") or ()]:
        return _mosaic(path, ds)
    frames = _int(ds, "NumberOfFrames") or 1
    if frames > 1:
        return _frames(path, ds, frames)
    return [_slice(path, ds, ds, None)]


def _mosaic(path: Path, ds: Values) -> list[SliceInfo]:
    """Cut a Siemens mosaic into per-tile records placed where each slice really is.

    ImagePositionPatient of a mosaic is the corner of the whole tiled image: the first slice sits half the
    unused tile area further along row and column; slices follow the CSA SliceNormalVector.
    """
    count, side, csa_normal = mosaic_layout(ds)
    base = _slice(path, ds, ds, None)
    if base.iop is None or base.ipp is None:
        raise ValueError(f"mosaic of {count} images without position/orientation")
    if base.rows % side or base.cols % side:
        # Real mosaics are a whole grid of equal tiles; anything else would be cut at a guessed stride.
        raise ValueError(f"mosaic {base.rows}x{base.cols} is not a whole {side}x{side} grid of tiles")
    rows, cols = base.rows // side, base.cols // side
    row, col = np.asarray(base.iop[:3]), np.asarray(base.iop[3:])
    dy, dx = base.pixel_spacing
    # Half the unused width in fractional tiles, as dcm2niix and nibabel place it.
    first = np.asarray(base.ipp) + row * dx * (base.cols - base.cols / side) / 2 + col * dy * (base.rows - base.rows / side) / 2
    normal = csa_normal if csa_normal is not None else np.cross(row, col)
    spacing = float(_num(ds, "SpacingBetweenSlices") or _num(ds, "SliceThickness") or 1.0)
    out = []
    places = (first + np.outer(np.arange(count), normal * spacing)).tolist()
    for k, (x, y, z) in enumerate(places):
        out.append(_frame_of(base, k, {"rows": rows, "cols": cols, "ipp": (x, y, z), "mosaic_side": side,
                                       "stack_normal": (float(normal[0]), float(normal[1]), float(normal[2]))}))
    return out


def _slice(path: Path, ds: Values, geo: Values, frame: int | None) -> SliceInfo:
    return SliceInfo(
        path=path,
        sop_uid=str(ds.get("SOPInstanceUID", path.name)),
        instance_number=_int(ds, "InstanceNumber") or 0,
        modality=str(ds.get("Modality", "OT")).upper(),
        rows=int(ds["Rows"].value if isinstance(ds, Dataset) else ds["Rows"]),
        cols=int(ds["Columns"].value if isinstance(ds, Dataset) else ds["Columns"]),
        acquisition_number=_int(ds, "AcquisitionNumber"),
        coil=str(ds.get("ReceiveCoilName", "") or vendor.siemens_coil(ds)),
        protocol=str(ds.get("ProtocolName", "") or ""),
        gantry_tilt=_num(ds, "GantryDetectorTilt", 0.0) or 0.0,
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper(),
        frame=frame,
        philips_scale_slope=vendor.philips_scale_slope(ds),
        ge_image_kind=vendor.ge_image_kind(ds),
        ge_group_delay=vendor.ge_group_delay(ds),
        ge_pepolar=vendor.ge_pepolar(ds),
        phase_axis=str(ds.get("InPlanePhaseEncodingDirection", "") or "").strip().upper(),
        pixel_offset=ds.get("_pixel_offset") if isinstance(ds, dict) else None,
        pixel_length=ds.get("_pixel_length") if isinstance(ds, dict) else None,
        bits_allocated=_int(ds, "BitsAllocated") or 16,
        bits_stored=_int(ds, "BitsStored") or _int(ds, "BitsAllocated") or 16,
        signed=_int(ds, "PixelRepresentation") == 1,
        samples=_int(ds, "SamplesPerPixel") or 1,
        transfer_syntax=str(ds.get("_transfer_syntax", "")) if isinstance(ds, dict) else _syntax(ds),
        parsed=ds if isinstance(ds, Dataset) else None,
        **_placed(ds, geo),
    )


def _spacing(ds: Values, geo: Values) -> dict[str, Any]:
    spacing = _floats(geo.get("PixelSpacing"), 2) or _floats(ds.get("ImagerPixelSpacing"), 2) or (1.0, 1.0)
    return {"pixel_spacing": (spacing[0], spacing[1])}


def _diffusion_fields(ds: Values, geo: Values) -> dict[str, Any]:
    bvalue, bvec = _diffusion(geo)
    return {"bvalue": bvalue, "bvec": bvec}


# The fields one frame of a multi-frame image may change, each with the keywords it is read from: geo is the
# image itself, or an enhanced frame's layers (per-frame, shared groups, then the image): the frame's own type
# (FrameType), echo time (EffectiveEchoTime) and timing come from the layer that has them.
_PLACED: tuple[tuple[frozenset[str], Callable[[Values, Values], dict[str, Any]]], ...] = (
    (frozenset({"ImageOrientationPatient"}), lambda ds, g: {"iop": _floats(g.get("ImageOrientationPatient"), 6)}),
    (frozenset({"ImagePositionPatient"}), lambda ds, g: {"ipp": _floats(g.get("ImagePositionPatient"), 3)}),
    (frozenset({"PixelSpacing"}), _spacing),
    (frozenset({"FrameType"}), lambda ds, g: {"image_type": tuple(
        str(v).upper() for v in _listed(g.get("FrameType") or ds.get("ImageType") or ()))}),
    (frozenset({"EchoNumbers"}), lambda ds, g: {"echo_number": _int(g, "EchoNumbers")}),
    (frozenset({"EffectiveEchoTime", "EchoTime"}), lambda ds, g: {
        "echo_time": _num(g, "EffectiveEchoTime") if "EffectiveEchoTime" in g else _num(g, "EchoTime")}),
    (frozenset({"RepetitionTime"}), lambda ds, g: {"repetition_time": _num(g, "RepetitionTime")}),
    (frozenset({"FlipAngle"}), lambda ds, g: {"flip_angle": _num(g, "FlipAngle")}),
    (frozenset({"TemporalPositionIdentifier", "TemporalPositionIndex"}), lambda ds, g: {
        "temporal_position": _int(g, "TemporalPositionIdentifier") or _int(g, "TemporalPositionIndex")}),
    (frozenset({"TriggerTime"}), lambda ds, g: {"trigger_time": _num(g, "TriggerTime")}),
    (frozenset({"RescaleSlope"}), lambda ds, g: {"slope": _num(g, "RescaleSlope", 1.0) or 1.0}),
    (frozenset({"RescaleIntercept"}), lambda ds, g: {"intercept": _num(g, "RescaleIntercept", 0.0) or 0.0}),
    # GE's private gradient is given in the image frame: a frame's own orientation changes it too.
    (frozenset({"DiffusionBValue", "DiffusionGradientOrientation", "ImageOrientationPatient"}), _diffusion_fields),
)


def _placed(ds: Values, geo: Values) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _, read in _PLACED:
        out.update(read(ds, geo))
    return out


def _placed_frame(ds: Values, geo: Values, base: dict[str, Any], keys: Any) -> dict[str, Any]:
    """_placed for one frame whose own functional groups hold `keys`: only the fields read from them are read
    again; the others are the shared groups' (base). Thousands of frames, a few keywords each."""
    out = dict(base)
    for words, read in _PLACED:
        if not words.isdisjoint(keys):
            out.update(read(ds, geo))
    return out


def _listed(value: Any) -> Any:
    """A multi-valued text as its values (the fast reader gives a lone value as a string)."""
    return (value,) if isinstance(value, str) else value


def _syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""


def _frames(path: Path, ds: Dataset, frames: int) -> list[SliceInfo]:
    """Expand an enhanced multi-frame image into per-frame records (per-frame, then shared functional groups, then
    the top level: looked up in that order, never copied per frame)."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared_geo = _standard_groups(shared[0]) if shared else Dataset()
    base = _slice(path, ds, _Layers((shared_geo, ds)), None)
    out = []
    for f in range(frames):
        frame_geo = _standard_groups(per_frame[f]) if per_frame and f < len(per_frame) else Dataset()
        out.append(_frame_of(base, f, _placed(ds, _Layers((frame_geo, shared_geo, ds)))))
    return out


def _fast_frames(path: Path, fast: dict[str, Any], frames: int) -> list[SliceInfo]:
    """_frames from the fast reader's functional groups (explicit VR little endian, native pixels): the same
    layers as plain dicts, so thousands of frames cost no pydicom element lookups."""
    layers = {**fast, **(fast.get("_shared") or {})}
    base = _slice(path, fast, layers, None)
    shared = _placed(fast, layers)
    per_frame = fast["_frames"]
    out = []
    for f in range(frames):
        own = per_frame[f] if f < len(per_frame) else {}
        out.append(_frame_of(base, f, _placed_frame(fast, {**layers, **own}, shared, own.keys())))
    return out


def _frame_of(base: SliceInfo, frame: int, placed: dict[str, Any]) -> SliceInfo:
    """base with one frame's fields: dataclasses.replace re-runs __init__ over every field, which thousands of
    frames notice; a frozen dataclass without __post_init__ or slots can be copied by its __dict__."""
    out = object.__new__(SliceInfo)
    out.__dict__.update(base.__dict__, frame=frame, **placed)
    return out


def _standard_groups(groups: Dataset) -> Dataset:
    """One functional groups item flattened. Standard sequences only: a vendor's private per-frame copy (Philips
    (2005,140F)) may carry another ImagePositionPatient, and the standard PlanePositionSequence is the right one."""
    geo = Dataset()
    for seq in groups:
        if seq.VR == "SQ" and len(seq.value) > 0 and not seq.tag.is_private:
            _flatten(seq.value[0], geo)
    return geo


class _Layers:
    """Datasets looked up in order (the first that has a keyword answers), as `.get()` and `in`."""

    def __init__(self, layers: tuple[Dataset, ...]) -> None:
        self.layers = layers

    def get(self, key: str, default: Any = None) -> Any:
        for layer in self.layers:
            value = layer.get(key)
            if value is not None:
                return value
        return default

    def __contains__(self, key: str) -> bool:
        return any(key in layer for layer in self.layers)


def _flatten(item: Dataset, into: Dataset) -> None:
    for elem in item:
        if elem.tag.is_private:
            continue
        if elem.VR == "SQ":
            if len(elem.value) > 0:
                _flatten(elem.value[0], into)
        else:
            into[elem.tag] = elem
    # Standard-form gradient: DiffusionGradientDirectionSequence > DiffusionGradientOrientation, found by recursion.


# ----- splitting -----------------------------------------------------------------------------------------------


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


SplitRule = tuple[str, str, Callable[[SliceInfo], Hashable]]

SPLIT_RULES: tuple[SplitRule, ...] = (
    ("SPLIT_IMAGE_TYPE", "image type differs", lambda s: (s.image_type, s.ge_image_kind)),
    ("SPLIT_ECHO", "echo number / echo time differs", lambda s: (s.echo_number, _round(s.echo_time, 2))),
    ("SPLIT_TR", "repetition time differs", lambda s: _round(s.repetition_time, 2)),
    ("SPLIT_FLIP_ANGLE", "flip angle differs", lambda s: _round(s.flip_angle, 2)),
    ("SPLIT_ORIENTATION", "image orientation differs", lambda s: None if s.iop is None else tuple(round(v, 3) for v in s.iop)),
    ("SPLIT_DIMENSIONS", "rows/columns or pixel spacing differ",
     lambda s: (s.rows, s.cols, round(s.pixel_spacing[0], 4), round(s.pixel_spacing[1], 4))),
    ("SPLIT_COIL", "receive coil differs", lambda s: s.coil),
    ("SPLIT_PROTOCOL", "protocol differs", lambda s: s.protocol),
)

_TYPE_SUFFIX = (("P", "_ph"), ("PHASE", "_ph"), ("R", "_real"), ("REAL", "_real"), ("I", "_imaginary"),
                ("IMAGINARY", "_imaginary"), ("W", "_water"), ("WATER", "_water"), ("F", "_fat"), ("FAT", "_fat"),
                ("IP", "_inphase"), ("IN_PHASE", "_inphase"), ("OP", "_outphase"), ("OUT_PHASE", "_outphase"))


_ALWAYS_SUFFIX = frozenset({"_ph", "_real", "_imaginary", "_phMag"})
_GE_KIND_SUFFIX = {1: "_ph", 2: "_real", 3: "_imaginary"}


@dataclass
class Group:
    """Slices that belong in one output file, with the name suffix that tells it apart from its siblings."""

    slices: list[SliceInfo]
    suffix: str = ""


def split_series(slices: Sequence[SliceInfo]) -> tuple[list[Group], list[Issue]]:
    """Split a series into groups the way dcm2niix does; one Issue per rule that split it."""
    memo: dict[tuple[Hashable, ...], tuple[Hashable, ...]] = {}
    keys = []
    for s in slices:  # thousands of frames share a few distinct raw values: each is rounded once
        raw = (s.image_type, s.ge_image_kind, s.echo_number, s.echo_time, s.repetition_time, s.flip_angle, s.iop,
               s.rows, s.cols, s.pixel_spacing, s.coil, s.protocol)
        key = memo.get(raw)
        if key is None:
            key = memo[raw] = tuple(rule[2](s) for rule in SPLIT_RULES)
        keys.append(key)
    groups: dict[tuple[Hashable, ...], list[SliceInfo]] = {}
    for key, s in zip(keys, slices, strict=True):
        groups.setdefault(key, []).append(s)
    splits: list[Issue] = []
    varying: set[int] = set()
    for i, (code, text, _) in enumerate(SPLIT_RULES):
        values = {k[i] for k in keys}
        if len(values) > 1:
            varying.add(i)
            splits.append(Issue(code, f"{text} ({len(values)} values)"))
    out = []
    for members in groups.values():
        first = min(members, key=lambda s: s.instance_number)
        kind = next((sfx for code, sfx in _TYPE_SUFFIX if code in first.image_type[2:]), "")
        if not kind and first.ge_image_kind in _GE_KIND_SUFFIX:  # GE field maps say it privately
            kind = _GE_KIND_SUFFIX[first.ge_image_kind]
            if kind == "_ph" and "M" in first.image_type[2:]:
                kind = "_phMag"  # as dcm2niix names a GE phase image whose ImageType still says magnitude
        # Like dcm2niix, phase/real/imaginary images are named as such even when nothing else split them.
        suffix = kind if kind in _ALWAYS_SUFFIX or 0 in varying else ""
        known_type = (bool(kind) or bool({"M", "MAGNITUDE"} & set(first.image_type[2:])) or 0 not in varying
                      or first.ge_image_kind == 0)
        if 1 in varying:
            echo = first.echo_number
            if echo is None:
                tes = sorted({_round(s.echo_time, 2) or 0.0 for s in slices})
                echo = tes.index(_round(first.echo_time, 2) or 0.0) + 1
            suffix += f"_e{echo}"
        if varying - {0, 1} or not known_type:
            suffix += f"_i{first.instance_number:05d}"
        out.append(Group(sorted(members, key=lambda s: s.instance_number), suffix))
    out.sort(key=lambda g: (g.suffix, g.slices[0].instance_number))
    return out, splits


def looks_like_localizer(slices: Sequence[SliceInfo], description: str) -> bool:
    """The one localizer decision (node.dicom.facts), from the slices' ImageType, the name and the planes."""
    image_type = sorted({v for s in slices for v in s.image_type})
    return facts.localizer(image_type, description, facts.planes(s.iop for s in slices)) is not None


# ----- stacking ------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """One output file's slices in spatial order: volumes[t][z], plus its geometry and what was wrong with it."""

    volumes: list[list[SliceInfo]]
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    step: np.ndarray  # vector from one slice to the next (along normal unless gantry tilt)
    slice_spacing: float
    issues: list[Issue] = field(default_factory=list)
    tilt_deg: float = 0.0
    projection: bool = False
    corner: np.ndarray | None = None  # LPS of the first voxel in DICOM order when images carry no IPP
    flip_rows: bool = True  # dcm2niix stores rows bottom-up, except for multi-frame images without geometry

    @property
    def first(self) -> SliceInfo:
        return self.volumes[0][0]

    @property
    def geometry_errors(self) -> list[Issue]:
        return [i for i in self.issues if i.code in GEOMETRY_ERRORS]


def _temporal_key(s: SliceInfo) -> tuple[float, ...]:
    """The order of the images at one slice position: as dcm2niix, by temporal position then InstanceNumber.

    AcquisitionNumber only breaks ties (instance numbers restarting per acquisition): a Philips multiband DTI
    numbers acquisitions per slice group, and ordering by it first mixed gradient directions between volumes."""
    return (
        float(s.temporal_position or 0),
        float(s.instance_number),
        float(s.acquisition_number or 0),
        float(s.trigger_time or 0.0),
        float(s.frame or 0),
    )


def stack_group(group: Group, position_tol: float = 0.01, spacing_tol: float = 0.01) -> Stack:
    """Sort a group spatially (IPP projected on the slice normal), detect 4D repeats and geometry faults."""
    slices = group.slices
    first = slices[0]
    if first.iop is None or any(s.ipp is None for s in slices):
        return _projection_stack(slices)
    row = np.asarray(first.iop[:3])
    col = np.asarray(first.iop[3:])
    normal = np.cross(row, col)
    if first.stack_normal is not None and float(np.dot(first.stack_normal, normal)) < 0:
        normal = -normal  # dcm2niix keeps a mosaic's slices in CSA order, even when that is descending
    dist = (np.asarray([s.ipp for s in slices], dtype=np.float64) @ normal).tolist()
    timing = [_temporal_key(s) for s in slices]
    order = sorted(range(len(slices)), key=lambda i: (dist[i], timing[i]))
    clusters: list[list[int]] = []
    for i in order:
        if clusters and abs(dist[i] - dist[clusters[-1][0]]) <= position_tol:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    issues: list[Issue] = []
    positions: list[list[SliceInfo]] = []
    dropped = 0
    for members in clusters:
        kept: list[SliceInfo] = []
        seen: set[tuple[Hashable, ...]] = set()
        for i in sorted(members, key=timing.__getitem__):
            s = slices[i]
            key = (s.sop_uid, s.frame) if s.frame is not None else (s.sop_uid,)
            ident = (*timing[i], s.bvalue, s.bvec)
            if key in seen or ident in seen:
                dropped += 1
                continue
            seen.update({key, ident})
            kept.append(s)
        positions.append(kept)
    if dropped:
        issues.append(Issue("DUPLICATE_SLICE", f"{dropped} duplicate image(s) at an occupied position ignored"))
    counts = [len(p) for p in positions]
    n_vol = min(counts)
    if max(counts) != n_vol:
        issues.append(Issue("INCOMPLETE_4D", f"positions hold {n_vol} to {max(counts)} images; "
                                             f"only {n_vol} complete volume(s)"))
    volumes = [[p[t] for p in positions] for t in range(n_vol)]
    mixed = _diffusion_mismatch(volumes)
    if mixed:
        issues.append(Issue("DIFFUSION_MISMATCH", mixed))
    centers = np.array([np.asarray(p[0].ipp) for p in positions])
    d = np.array([float(np.dot(c, normal)) for c in centers])
    spacing = 0.0
    step = normal.copy()
    tilt = 0.0
    if len(d) > 1:
        steps = np.diff(d)
        median = float(np.median(steps))
        tol = max(position_tol * 2, spacing_tol * median)
        spacing = (float(d[-1]) - float(d[0])) / (len(d) - 1)
        off = np.abs(steps - median) > tol
        if off.any():
            ratio = steps[off] / median
            if np.all(np.abs(ratio - np.round(ratio)) * median <= tol) and np.all(np.round(ratio) >= 2):
                missing = int(np.sum(np.round(ratio) - 1))
                issues.append(Issue("MISSING_SLICE", f"{missing} slice(s) missing: gap of "
                                                     f"{float(np.max(steps)):.3g} mm where slices are {median:.3g} mm apart"))
            else:
                issues.append(Issue("UNEVEN_SPACING", f"slice spacing varies from {float(np.min(steps)):.4g} to "
                                                      f"{float(np.max(steps)):.4g} mm"))
        else:
            spacing = median
        # In-plane drift of IPP from slice to slice is a sheared (gantry-tilted) acquisition.
        total = centers[-1] - centers[0]
        along = float(np.dot(total, normal))
        inplane = total - along * normal
        if float(np.linalg.norm(inplane)) > position_tol * 2 and abs(along) > 0:
            step = total / along  # per mm along the normal
            tilt = float(np.degrees(np.arctan2(float(np.linalg.norm(inplane)), abs(along))))
            issues.append(Issue("GANTRY_TILT", f"slices sheared by {tilt:.2f} degrees "
                                               f"(GantryDetectorTilt {first.gantry_tilt:g})"))
    if spacing <= 0:
        # One slice: like dcm2niix, the declared spacing, else the thickness, sizes the third axis.
        spacing = float(_num(first.header, "SpacingBetweenSlices") or _num(first.header, "SliceThickness") or 1.0)
    return Stack(volumes, row, col, normal, step * spacing if tilt else normal * spacing, spacing, issues, tilt)


def _diffusion_mismatch(volumes: list[list[SliceInfo]]) -> str | None:
    """Why the volumes cannot be trusted as diffusion volumes: one whose slices disagree on b-value or gradient
    (the images were ordered into volumes wrongly), or None."""
    bad = []
    for t, volume in enumerate(volumes):
        bvals = {round(float(s.bvalue), 1) for s in volume if s.bvalue is not None}
        bvecs = {tuple(round(float(c), 3) for c in s.bvec) for s in volume if s.bvec is not None}
        if len(bvals) > 1 or len(bvecs) > 1:
            bad.append(t + 1)
    if not bad:
        return None
    shown = ", ".join(str(t) for t in bad[:10]) + (" ..." if len(bad) > 10 else "")
    return (f"{len(bad)} of {len(volumes)} volume(s) mix b-values or gradient directions across their slices "
            f"(volumes {shown}): the images cannot be ordered into diffusion volumes safely")


def _projection_stack(slices: Sequence[SliceInfo]) -> Stack:
    """Images without patient geometry: one 2D image, or the frames of one multi-frame file in frame order.

    Like dcm2niix, the volume is centred on the origin with identity orientation, and NO_GEOMETRY says so.
    """
    same_file = len({s.path for s in slices}) == 1 and all(s.frame is not None for s in slices)
    if len(slices) != 1 and not same_file:
        raise ValueError(f"{len(slices)} images without patient geometry cannot be stacked")
    ordered = sorted(slices, key=lambda s: s.frame or 0)
    first = ordered[0]
    dy, dx = first.pixel_spacing
    dz = float(_num(first.header, "SpacingBetweenSlices") or _num(first.header, "SliceThickness") or 1.0)
    if len(ordered) == 1:
        dz = float(_num(first.header, "SliceThickness") or 1.0)
    corner = -np.array([dx * (first.cols - 1), dy * (first.rows - 1), dz * (len(ordered) - 1)]) / 2
    issues = [] if len(ordered) == 1 else [Issue("NO_GEOMETRY", "frames have no position/orientation; "
                                                                "stacked in frame order, centred, identity orientation")]
    row, col, normal = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    if len(ordered) == 1:
        return Stack([ordered], row, col, normal, normal * dz, dz, issues, projection=True, corner=corner)
    # dcm2niix keeps the frames' row order here and shows them anterior-up: same affine, unflipped rows.
    col = np.array([0.0, -1.0, 0.0])
    corner = corner * np.array([1.0, -1.0, 1.0])
    return Stack([ordered], row, col, normal, normal * dz, dz, issues, projection=True, corner=corner, flip_rows=False)


# ----- pixels --------------------------------------------------------------------------------------------------

_NATIVE = {ExplicitVRLittleEndian: 12, ImplicitVRLittleEndian: 8}


def read_pixels(s: SliceInfo, cache: dict[Path, np.ndarray] | None = None) -> np.ndarray:
    """Stored values of one image as a 2D array [rows, cols] (decoded once; multi-frame files cached per call);
    a reverse-polarity image (reverse_rows) comes with its rows reversed."""
    arr = _stored(s, cache)
    return arr[::-1] if s.reverse_rows else arr


def _stored(s: SliceInfo, cache: dict[Path, np.ndarray] | None = None) -> np.ndarray:
    if s.mosaic_side:
        full = cache.get(s.path) if cache is not None else None
        if full is None:
            whole = replace(s, rows=s.rows * s.mosaic_side, cols=s.cols * s.mosaic_side, frame=None, mosaic_side=0)
            full = _stored(whole)
            if cache is not None:
                cache.clear()
                cache[s.path] = full
        r0, c0 = (s.frame or 0) // s.mosaic_side * s.rows, (s.frame or 0) % s.mosaic_side * s.cols
        return full[r0:r0 + s.rows, c0:c0 + s.cols]
    if s.frame is not None:
        if cache is not None and s.path in cache:
            return cache[s.path][s.frame]
        native = _read_native(s, _frame_count(s)) if s.pixel_offset is not None else None
        frames = native if native is not None else _decode(s.path)
        if cache is not None:
            cache.clear()  # one multi-frame file at a time keeps memory bounded
            cache[s.path] = frames
        return frames[s.frame]
    fast = _read_native(s)
    if fast is not None:
        return fast
    arr = _decode(s.path)
    if arr.ndim != 2:
        raise ValueError(f"{s.path.name}: expected one grey-level frame, got pixel array of shape {arr.shape}")
    return arr


def _decode(path: Path) -> np.ndarray:
    """All frames of a file through pydicom's decoders (compressed syntaxes, big endian, odd bit depths)."""
    ds = pydicom.dcmread(path)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ValueError(f"{path.name}: no pixel data")
    arr: np.ndarray = ds.pixel_array
    return arr


def _frame_count(s: SliceInfo) -> int:
    """Frames in a multi-frame file's native pixel data, from its length (the fast reader found both)."""
    one = s.rows * s.cols * max(s.bits_allocated // 8, 1)
    return max((s.pixel_length or 0) // one, (s.frame or 0) + 1)


def _read_native(s: SliceInfo, frames: int = 0) -> np.ndarray | None:
    """Read uncompressed little-endian 8/16-bit pixel data straight from the file when it is laid out simply.

    pydicom's decoder is the reference; this path is taken only at the offset the fast header reader found,
    or when the last element is exactly the pixel data of the expected length (checked byte for byte).
    frames > 0: all frames of a multi-frame file as [frames, rows, cols] (only at a known offset).
    """
    header_len = _NATIVE.get(UID(s.transfer_syntax)) if s.transfer_syntax else None
    bits = s.bits_allocated
    if header_len is None or bits not in (8, 16) or s.samples != 1:
        return None
    if s.signed and s.bits_stored != bits:
        return None
    n = s.rows * s.cols * bits // 8 * max(frames, 1)
    if frames and s.pixel_offset is None:
        return None
    with open(s.path, "rb") as fh:
        if s.pixel_offset is not None:
            if s.pixel_length is not None and s.pixel_length < n:
                raise ValueError(f"{s.path.name}: pixel data holds {s.pixel_length} bytes, {n} expected")
            fh.seek(s.pixel_offset)
            blob = fh.read(n)
            if len(blob) != n:
                raise ValueError(f"{s.path.name}: pixel data truncated ({len(blob)} of {n} bytes)")
            offset = 0
        else:
            fh.seek(0, 2)
            size = fh.tell()
            if size < n + header_len:
                return None
            fh.seek(size - n - header_len)
            blob = fh.read()
            tag, length = blob[:header_len], n.to_bytes(4, "little")
            if header_len == 12:
                if tag[:4] != b"\xe0\x7f\x10\x00" or tag[4:6] not in (b"OW", b"OB") or tag[8:] != length:
                    return None
            elif tag != b"\xe0\x7f\x10\x00" + length:
                return None
            offset = header_len
    dtype = np.dtype(("<i" if s.signed else "<u") + str(bits // 8))
    arr = np.frombuffer(blob, dtype=dtype, offset=offset)
    arr = arr.reshape(frames, s.rows, s.cols) if frames else arr.reshape(s.rows, s.cols)
    if not s.signed and s.bits_stored < bits:
        arr = arr & np.array((1 << s.bits_stored) - 1, dtype=dtype)
    return arr
