"""Vendor conventions in private elements that change voxels, volumes or their meaning (Siemens, GE, Philips).

Each is read only when its private creator says the block is that vendor's; a value the node cannot read is
absent (None), never guessed. Every convention here has a generated fixture compared with dcm2niix
(tests/integration/process/test_nifti_vs_dcm2niix.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from node.process.nifti.headers import PHILIPS_MR_IMAGING, SIEMENS_MR_HEADER
from node.process.nifti.values import Values, floats

GE_PARM = "GEMS_PARM_01"
_VENDORS = ("Siemens", "GE", "Philips")  # the fast reader's creator keywords: <Vendor>Creator<group>
Vector = tuple[float, float, float]

# How dcm2niix reads GE's gradient (0019,10BB/BC/BD): in the image frame, with signs that depend on the slice
# orientation (checked against Debian's dcm2niix for axial, oblique, sagittal and coronal, COL and ROW).
_GE_SIGNS = {"AX": (-1.0, -1.0, 1.0), "SAG": (1.0, 1.0, -1.0), "COR": (-1.0, 1.0, 1.0)}


def private(ds: Values, keyword: str, tag: tuple[int, int], creator: str, binary: str | None = None) -> Any:
    """A private element's value when the block's creator is `creator`, else None.

    `keyword` is the fast reader's name for it (headers.WANTED, with the creator under `<Vendor>Creator<group>`),
    `tag` its (group, element) for a pydicom Dataset. `binary` is the numpy dtype of a value pydicom left as
    bytes (implicit VR or UN): "<f4", "<f8", "<i2"; text otherwise."""
    group = tag[0]
    if isinstance(ds, dict):
        owner = next((ds[k] for k in (f"{v}Creator{group:04X}" for v in _VENDORS) if k in ds), None)
        return ds.get(keyword) if str(owner or "").strip() == creator else None
    if not isinstance(ds, Dataset):
        return None
    owner_elem = ds.get((group, 0x0010))
    elem = ds.get(tag)
    if owner_elem is None or elem is None or str(owner_elem.value).strip() != creator:
        return None
    value = elem.value
    if isinstance(value, bytes):
        if binary is None:
            return value.decode("latin-1").strip("\0 ")
        size = np.dtype(binary).itemsize
        items = np.frombuffer(value[: len(value) // size * size], dtype=binary)
        return [float(v) for v in items] if len(items) > 1 else (float(items[0]) if len(items) else None)
    return value


def _first_float(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str | bytes | int | float) and hasattr(value, "__iter__"):
        value = next(iter(value), None)
    elif isinstance(value, str):
        value = value.split("\\")[0]
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _vendor(ds: Values, name: str) -> bool:
    return name in str(ds.get("Manufacturer", "")).upper() + " "


def siemens_diffusion(ds: Values) -> tuple[float | None, Vector | None]:
    """Siemens CSA-era (0019,100C) B_value and (0019,100E) DiffusionGradientDirection (LPS)."""
    if not _vendor(ds, "SIEMENS"):
        return None, None
    bvalue = _first_float(private(ds, "SiemensBValue", (0x0019, 0x100C), SIEMENS_MR_HEADER))
    vec = floats(private(ds, "SiemensGradient", (0x0019, 0x100E), SIEMENS_MR_HEADER, "<f8"), 3)
    return bvalue, (vec[0], vec[1], vec[2]) if vec is not None else None


def ge_diffusion(ds: Values) -> tuple[float | None, Vector | None]:
    """GE's b-value (first value of (0043,1039), less a 1e9 offset some versions add) and gradient
    ((0019,10BB/BC/BD), image frame; in-plane axes swapped for ROW phase encoding) in patient LPS. Without a
    known phase encoding direction no gradient is guessed."""
    if not _vendor(ds, "GE "):
        return None, None
    bvalue = _first_float(private(ds, "GEBValue", (0x0043, 0x1039), GE_PARM))
    if bvalue is not None and bvalue >= 1e9:
        bvalue -= 1e9
    gradient = [_first_float(private(ds, f"GEGradient{a}", (0x0019, t), "GEMS_ACQU_01"))
                for a, t in (("X", 0x10BB), ("Y", 0x10BC), ("Z", 0x10BD))]
    iop = floats(ds.get("ImageOrientationPatient"), 6)
    phase = str(ds.get("InPlanePhaseEncodingDirection", "") or "").strip().upper()
    if bvalue is None or any(g is None for g in gradient) or iop is None or phase not in ("ROW", "COL"):
        return bvalue, None
    gx, gy, gz = (float(g or 0.0) for g in gradient)
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    normal = np.cross(row, col)
    if phase == "ROW":
        gx, gy = gy, -gx
    label = "AX" if abs(normal[2]) >= max(abs(normal[0]), abs(normal[1])) else (
        "SAG" if abs(normal[0]) >= abs(normal[1]) else "COR")
    sx, sy, sz = _GE_SIGNS[label]
    lps = sx * gx * row + sy * gy * col + sz * gz * normal
    return bvalue, (float(lps[0]), float(lps[1]), float(lps[2]))


def ge_image_kind(ds: Values) -> int | None:
    """GE's image kind (0043,102F) of a field map or complex series: 0 magnitude, 1 phase, 2 real, 3 imaginary."""
    if not _vendor(ds, "GE "):
        return None
    value = _first_float(private(ds, "GEImageKind", (0x0043, 0x102F), GE_PARM, "<i2"))
    return None if value is None else int(value)


def ge_group_delay(ds: Values) -> float:
    """GE's group delay (0043,107C, seconds): volumes of such a series are TR + delay apart (dcm2niix adds it)."""
    if not _vendor(ds, "GE "):
        return 0.0
    delay = _first_float(private(ds, "GEGroupDelay", (0x0043, 0x107C), GE_PARM, "<f4"))
    return delay if delay is not None and 0 < delay < 60 else 0.0


def ge_pepolar(ds: Values) -> int | None:
    """GE's reverse-polarity EPI (pulse sequence (0019,109C) "epi_pepolar"/"epi2_pepolar"): user data 12
    (0019,10B3) says which volumes were acquired with the phase encoding reversed: 0 none, 1 all, 2 the even
    ones (0, 2, ...), 3 the odd ones, 4 and 5 alternating but already flipped by the scanner. None: not one."""
    if not _vendor(ds, "GE "):
        return None
    name = private(ds, "GEPulseSequenceName", (0x0019, 0x109C), "GEMS_ACQU_01")
    if "pepolar" not in str(name or "").lower():
        return None
    mode = _first_float(private(ds, "GEUserData12", (0x0019, 0x10B3), "GEMS_ACQU_01"))
    return round(mode) if mode is not None and 0 <= mode <= 5 else 0


def philips_scale_slope(ds: Values) -> float | None:
    """Philips' MRScaleSlope (2005,100E) of a classic image: the scale of the "precise" floating-point values."""
    if not _vendor(ds, "PHILIPS"):
        return None
    value = _first_float(private(ds, "PhilipsScaleSlope", (0x2005, 0x100E), PHILIPS_MR_IMAGING, "<f4"))
    return value if value else None


def siemens_coil(ds: Values) -> str:
    """Siemens' coil element (0051,100F) of the CSA era (the dcm2niix split on coil)."""
    if isinstance(ds, dict):
        return str(ds.get("SiemensCoil", "") or "")
    elem = ds.get((0x0051, 0x100F))
    value = getattr(elem, "value", "") if elem is not None else ""
    return value.decode("latin-1").strip("\0 ") if isinstance(value, bytes) else str(value or "").strip()
