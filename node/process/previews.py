"""PNG previews of the volumes the NIfTI step writes, from the array it already holds (no second pixel read).

A 3D volume shows its three orthogonal middle slices, a stack of thick slices a few evenly spaced ones, a
single image (radiograph, mammogram) itself. Windowed from the DICOM window when the header has one, else
from robust percentiles; MONOCHROME1 is shown inverted (as a viewer shows it); each panel carries the patient
directions of its edges (R/L, A/P, H/F) computed from the image orientation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

PANEL = 256  # pixels on the long side of a panel
SINGLE = 512  # a lone 2D image is shown larger
STACK_PANELS = 6
_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))  # LPS axes: (negative, positive)
_TOWARD_TOP = frozenset({"A", "H", "R"})  # a row axis pointing there is flipped: those go at the top
_TOWARD_LEFT = frozenset({"R", "A", "H"})  # a column axis pointing there is flipped: those go on the left


def direction_letter(vector: np.ndarray) -> str:
    """The patient direction a voxel axis points to (LPS), by its largest component."""
    axis = int(np.argmax(np.abs(vector)))
    return _LETTERS[axis][1 if vector[axis] > 0 else 0]


def _window(header: Any, values: np.ndarray) -> tuple[float, float]:
    center = _first(header.get("WindowCenter") if header is not None else None)
    width = _first(header.get("WindowWidth") if header is not None else None)
    if center is not None and width is not None and width > 0:
        return center - width / 2, center + width / 2
    flat = values.reshape(-1)
    sample = flat[:: max(1, flat.size // 250_000)]
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    return (lo, hi) if hi > lo else (lo, lo + 1)


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str | bytes | int | float) and hasattr(value, "__iter__"):
            value = next(iter(value))  # a multi-valued window: the first one
        out = float(value)
    except (TypeError, ValueError, StopIteration):
        return None
    return out if math.isfinite(out) else None


def _to_uint8(image: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    scaled = (image.astype(np.float32) - lo) / (hi - lo)
    out = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    return 255 - out if invert else out


def _panel(image: np.ndarray, row_vec: np.ndarray, col_vec: np.ndarray, row_mm: float, col_mm: float,
           size: int) -> Image.Image:
    """One slice as a labelled panel with square physical pixels; rows run along row_vec, columns along col_vec.

    Flipped into the radiological convention viewers use: anterior or head at the top, patient right on the
    left (sagittal: anterior on the left)."""
    if direction_letter(row_vec) in _TOWARD_TOP:
        image, row_vec = image[::-1], -row_vec
    if direction_letter(col_vec) in _TOWARD_LEFT:
        image, col_vec = image[:, ::-1], -col_vec
    rows, cols = image.shape
    height_mm, width_mm = rows * row_mm, cols * col_mm
    scale = size / max(height_mm, width_mm)
    w, h = max(1, round(width_mm * scale)), max(1, round(height_mm * scale))
    panel = Image.fromarray(image, mode="L").resize((w, h), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(panel, ((size - w) // 2, (size - h) // 2))
    draw = ImageDraw.Draw(canvas)
    right, bottom = direction_letter(col_vec), direction_letter(row_vec)
    left, top = direction_letter(-col_vec), direction_letter(-row_vec)
    for text, xy in ((top, (size // 2 - 3, 2)), (bottom, (size // 2 - 3, size - 13)),
                     (left, (3, size // 2 - 6)), (right, (size - 10, size // 2 - 6))):
        draw.text(xy, text, fill=255)
    return canvas


def _sheet(panels: list[Image.Image], per_row: int) -> Image.Image:
    n = len(panels)
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    size = panels[0].size[0]
    sheet = Image.new("L", (cols * size + (cols - 1) * 4, rows * size + (rows - 1) * 4), 40)
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % cols) * (size + 4), (i // cols) * (size + 4)))
    return sheet


def render(data: np.ndarray, direction: np.ndarray, spacing: np.ndarray, photometric: str, header: Any) -> Image.Image:
    """The preview of a volume: data (z, y, x) or (t, z, y, x) in the stored voxel order; direction columns are the
    LPS unit vectors of the x, y and z voxel axes, spacing their steps in mm."""
    volume = data[0] if data.ndim == 4 else data
    nz, ny, nx = volume.shape
    lo, hi = _window(header, volume)
    invert = photometric == "MONOCHROME1"
    xv, yv, zv = (np.asarray(direction[:, i], dtype=np.float64) for i in range(3))
    sx, sy, sz = (float(v) for v in spacing)
    if nz == 1:
        step = max(1, max(ny, nx) // (2 * SINGLE))  # decimate a big radiograph before scaling it: same look
        image = volume[0, ::step, ::step]
        return _panel(_to_uint8(image, lo, hi, invert), yv, xv, sy * step, sx * step, SINGLE)
    volumetric = nz >= 16 and sz <= 3 * max(sx, sy)
    if not volumetric:
        picks = sorted({round(i) for i in np.linspace(0, nz - 1, min(STACK_PANELS, nz))})
        return _sheet([_panel(_to_uint8(volume[k], lo, hi, invert), yv, xv, sy, sx, PANEL) for k in picks], 3)
    native = _to_uint8(volume[nz // 2], lo, hi, invert)
    across_y = _to_uint8(volume[:, ny // 2, :], lo, hi, invert)  # rows run along z
    across_x = _to_uint8(volume[:, :, nx // 2], lo, hi, invert)
    panels = [_panel(native, yv, xv, sy, sx, PANEL)]
    for image, col_vec, col_mm in ((across_y, xv, sx), (across_x, yv, sy)):
        panels.append(_panel(image, zv, col_vec, sz, col_mm, PANEL))
    return _sheet(panels, 3)


def write(path: Path, data: np.ndarray, direction: np.ndarray, spacing: np.ndarray, photometric: str,
          header: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    render(data, direction, spacing, photometric, header).save(path, format="PNG", compress_level=3)
