"""Previews read back as images: size of each layout, windowing, MONOCHROME1 inversion, orientation letters."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from node.process import previews

AXIAL = np.eye(3)  # x voxel axis -> patient left, y -> posterior, z -> head (LPS)


def ramp_volume(nz: int, ny: int = 64, nx: int = 64) -> np.ndarray:
    z, y, x = np.mgrid[0:nz, 0:ny, 0:nx]
    return (x * 10 + y + z).astype(np.float32)


def png(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


def test_a_3d_volume_shows_three_orthogonal_panels_side_by_side(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    previews.write(path, ramp_volume(40), AXIAL, np.array([1.0, 1.0, 1.5]), "MONOCHROME2", Dataset())
    image = Image.open(path)
    assert image.format == "PNG" and image.mode == "L"
    assert image.size == (3 * previews.PANEL + 2 * 4, previews.PANEL)
    pixels = np.asarray(image, dtype=np.float64)
    assert 40 < pixels.mean() < 200 and pixels.std() > 30  # windowed, not black or white


def test_a_stack_of_thick_slices_shows_six_evenly_spaced_slices() -> None:
    image = png(previews.render(ramp_volume(20), AXIAL, np.array([0.5, 0.5, 6.0]), "MONOCHROME2", Dataset()))
    assert image.size == (3 * previews.PANEL + 2 * 4, 2 * previews.PANEL + 4)


def test_a_radiograph_is_shown_alone_and_larger() -> None:
    image = png(previews.render(ramp_volume(1, 300, 200), AXIAL, np.array([0.2, 0.2, 1.0]), "MONOCHROME2", Dataset()))
    assert image.size == (previews.SINGLE, previews.SINGLE)


def test_monochrome1_is_shown_inverted() -> None:
    volume = ramp_volume(1, 100, 100)
    normal = np.asarray(previews.render(volume, AXIAL, np.ones(3), "MONOCHROME2", Dataset()), dtype=np.int32)
    inverted = np.asarray(previews.render(volume, AXIAL, np.ones(3), "MONOCHROME1", Dataset()), dtype=np.int32)
    body = (slice(100, 400), slice(100, 400))  # away from the letters and the letterbox
    assert np.abs(normal[body] + inverted[body] - 255).max() <= 1


def test_the_dicom_window_is_used_when_the_header_has_one() -> None:
    volume = np.full((1, 50, 50), 40.0, dtype=np.float32)
    volume[0, :, 25:] = 1000.0
    header = Dataset()
    header.WindowCenter, header.WindowWidth = 40, 80  # a CT soft-tissue window: 40 is mid-grey, 1000 white
    pixels = np.asarray(previews.render(volume, AXIAL, np.ones(3), "MONOCHROME2", header))
    assert 120 <= pixels[256, 150] <= 135 and pixels[256, 380] == 255


@pytest.mark.parametrize(("vector", "letter"), [
    ((1, 0, 0), "L"), ((-1, 0, 0), "R"), ((0, 1, 0), "P"), ((0, -1, 0), "A"), ((0, 0, 1), "H"), ((0, 0, -1), "F"),
    ((0.2, -0.9, 0.1), "A"),
])
def test_axis_directions_become_patient_letters(vector: tuple[float, float, float], letter: str) -> None:
    assert previews.direction_letter(np.array(vector, dtype=float)) == letter


def test_the_orientation_letters_are_drawn_on_the_panel_edges() -> None:
    blank = np.zeros((1, 64, 64), dtype=np.float32)
    blank[0, 0, 0] = 1  # not constant, so the window is defined
    pixels = np.asarray(previews.render(blank, AXIAL, np.ones(3), "MONOCHROME2", Dataset()))
    size = previews.SINGLE
    assert pixels[:14, size // 2 - 8: size // 2 + 8].max() >= 200  # "A" at the top
    assert pixels[size // 2 - 8: size // 2 + 8, :12].max() >= 200  # "R" on the left
    assert pixels[100:400, 100:400].max() == 0  # and nothing else is drawn


def test_panels_follow_the_radiological_convention_whatever_the_stored_order() -> None:
    # A bright corner at the patient's anterior-right: it must show top-left however the voxels are stored.
    volume = np.zeros((1, 64, 64), dtype=np.float32)
    volume[0, :8, :8] = 1000  # first rows, first columns
    for rows_toward, cols_toward in ((1, 1), (-1, 1), (1, -1), (-1, -1)):
        direction = np.diag([cols_toward, rows_toward, 1.0])
        stored = volume.copy()
        if rows_toward == 1:  # rows run toward P: the first rows are anterior already
            pass
        else:  # rows run toward A: anterior is at the end
            stored = stored[:, ::-1]
        if cols_toward == -1:  # columns run toward R: the right is at the end
            stored = stored[:, :, ::-1]
        pixels = np.asarray(previews.render(stored, direction, np.ones(3), "MONOCHROME2", Dataset()))
        assert pixels[16:56, 16:56].mean() > 200, (rows_toward, cols_toward)  # top-left of the 512 px panel
        assert pixels[440:490, 440:490].mean() < 50
