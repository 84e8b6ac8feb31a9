"""QC flags on generated images: each flag raised where it should be, and clean images left alone."""

from __future__ import annotations

import numpy as np
import pytest

from node.process.qc import QcConfig, Thresholds, geometry_flags, pixel_flags

RNG = np.random.default_rng(7)
SHIPPED = QcConfig.from_section({})


def codes(flags: list[str]) -> list[str]:
    return [f.split(":", 1)[0] for f in flags]


def ct_like() -> np.ndarray:
    vol = np.full((20, 64, 64), -1000.0)
    yy, xx = np.mgrid[0:64, 0:64]
    body = (yy - 32) ** 2 + (xx - 32) ** 2 < 26**2
    vol[:, body] = RNG.normal(40, 20, size=(20, int(body.sum())))
    return vol


def radiograph(inverted: bool = False) -> np.ndarray:
    img = RNG.normal(300, 30, size=(200, 160))  # direct exposure: dark on display
    img[40:160, 30:130] = RNG.normal(2500, 300, size=(120, 100))  # the patient: bright
    return (4095 - img if inverted else img)[None].astype(np.float32)


def test_clean_ct_and_mr_volumes_are_not_flagged() -> None:
    assert pixel_flags(ct_like(), "CT", "MONOCHROME2", SHIPPED.for_modality("CT")) == []
    mr = RNG.gamma(2.0, 50.0, size=(30, 64, 64))
    assert pixel_flags(mr, "MR", "MONOCHROME2", SHIPPED.for_modality("MR")) == []


def test_a_constant_or_nearly_constant_image_is_blank() -> None:
    assert codes(pixel_flags(np.zeros((5, 32, 32)), "MR", "MONOCHROME2", SHIPPED.for_modality("MR"))) == ["BLANK"]
    nearly = np.zeros((5, 32, 32))
    nearly[0, 0, :5] = 100
    assert codes(pixel_flags(nearly, "MR", "MONOCHROME2", SHIPPED.for_modality("MR"))) == ["BLANK"]


def test_an_image_saturated_at_its_maximum_is_clipped_high() -> None:
    vol = RNG.normal(500, 100, size=(10, 64, 64))
    vol[:, :, :8] = 4095  # 12.5% of the voxels pinned at the top of the range
    flags = pixel_flags(vol, "MR", "MONOCHROME2", SHIPPED.for_modality("MR"))
    assert codes(flags) == ["CLIPPED_HIGH"] and "12.5%" in flags[0]


def test_an_under_exposed_radiograph_is_clipped_low_but_ct_air_is_not() -> None:
    dx = radiograph()
    dx[0, :, :60] = 0
    assert "CLIPPED_LOW" in codes(pixel_flags(dx, "DX", "MONOCHROME2", SHIPPED.for_modality("DX")))
    assert "CLIPPED_LOW" not in codes(pixel_flags(ct_like(), "CT", "MONOCHROME2", SHIPPED.for_modality("CT")))


def test_a_radiograph_with_inverted_polarity_is_flagged_and_a_normal_one_is_not() -> None:
    t = SHIPPED.for_modality("DX")
    assert pixel_flags(radiograph(), "DX", "MONOCHROME2", t) == []
    assert codes(pixel_flags(radiograph(inverted=True), "DX", "MONOCHROME2", t)) == ["INVERTED"]
    # MONOCHROME1 stores the inverse and says so: the same pixels are then displayed the right way round.
    assert pixel_flags(radiograph(inverted=True), "DX", "MONOCHROME1", t) == []
    assert pixel_flags(radiograph(inverted=True), "MR", "MONOCHROME2", t) == []  # only projection images


def test_even_slices_pass_and_a_missing_slice_uneven_gaps_and_duplicates_are_flagged() -> None:
    t = SHIPPED.for_modality("CT")
    even = [i * 2.5 for i in range(20)]
    assert geometry_flags(20, even, t) == []
    assert geometry_flags(40, even + even, t) == []  # two echoes per position: regular, not duplicates
    missing = [p for p in even if p != 25.0]
    assert codes(geometry_flags(19, missing, t)) == ["MISSING_SLICES"]
    uneven = [p + (0.4 if i % 3 == 0 else 0.0) for i, p in enumerate(even)]
    assert codes(geometry_flags(20, uneven, t)) == ["UNEVEN_SPACING"]
    assert codes(geometry_flags(21, [*even, 10.0], t)) == ["DUPLICATE_POSITIONS"]


def test_too_few_instances_for_the_modality_is_flagged_except_for_localizers() -> None:
    assert codes(geometry_flags(3, [0.0, 5.0, 10.0], SHIPPED.for_modality("CT"))) == ["FEW_INSTANCES"]
    assert geometry_flags(3, [0.0, 5.0, 10.0], SHIPPED.for_modality("CT"), localizer=True) == []
    assert geometry_flags(1, None, SHIPPED.for_modality("CR")) == []


def test_config_thresholds_override_the_shipped_ones_per_modality() -> None:
    qc = QcConfig.from_section({"thresholds": {"ct": {"min_instances": 2}, "default": {"clip_high_fraction": None}}})
    assert qc.for_modality("CT").min_instances == 2
    assert qc.for_modality("CT").clip_high_fraction is None  # the site default reaches every modality
    assert qc.for_modality("MR").min_instances == 5 and qc.for_modality("XC") == Thresholds(
        min_instances=1, clip_high_fraction=None, clip_low_fraction=None, check_polarity=False)


@pytest.mark.parametrize("modality", ["CT", "MR", "PT", "CR", "DX", "MG", "US"])
def test_every_shipped_modality_has_thresholds(modality: str) -> None:
    assert isinstance(SHIPPED.for_modality(modality), Thresholds)
