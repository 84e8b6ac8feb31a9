"""Closed vocabularies of the MR_clean output columns."""

from __future__ import annotations

from enum import StrEnum


class Orientation(StrEnum):
    """Slice orientation from the slice normal (or, without IOP, from the series name)."""

    AX = "AX"
    SAG = "SAG"
    COR = "COR"
    OBL = "OBL"
    UNKNOWN = "UNKNOWN"


class Dimension(StrEnum):
    """Acquisition dimensionality (MRAcquisitionType)."""

    D2 = "2D"
    D3 = "3D"
    UNKNOWN = "UNKNOWN"


class ImageKind(StrEnum):
    """refinedImageType: what kind of image the series holds."""

    ORIGINAL = "ORIGINAL"
    DERIVED = "DERIVED"
    LOCALIZER = "LOCALIZER"
    OTHER = "OTHER"


class FieldStrength(StrEnum):
    """Field-strength bucket; also the key of every per-field-strength threshold table in the config."""

    LOW = "Low-Field"
    T15 = "1.5T"
    T30 = "3.0T"
    HIGH = "High-Field"
    UNKNOWN = "UNKNOWN"


class Manufacturer(StrEnum):
    """Normalised vendor; the config maps name keywords to these values."""

    SIEMENS = "Siemens"
    PHILIPS = "Philips"
    GE = "GE"
    UIH = "UIH"
    CANON = "Canon"
    FUJIFILM_HITACHI = "Fujifilm/Hitachi"
    ANKE = "Anke"
    MINDRAY = "Mindray"
    SHIMADZU = "Shimadzu"
    OTHER = "Other"


class Family(StrEnum):
    """Pulse-sequence family, the second half of a physics-based sequenceClass (T1_<family>)."""

    GRE = "GRE"
    GRE_SPOILED = "GRE_SPOILED"
    GRE_STEADY_STATE = "GRE_STEADY_STATE"
    SE = "SE"
    TSE = "TSE"
    SE_SINGLE_SHOT = "SE_SingleShot"
    EPI = "EPI"


class Weighting(StrEnum):
    """Contrast weighting, the first half of a physics-based sequenceClass."""

    T1 = "T1"
    T2 = "T2"
    PD = "PD"
    T2STAR = "T2STAR"


class DixonOutput(StrEnum):
    """Which Dixon reconstruction a series holds (becomes a sequenceClass suffix)."""

    WATER = "WATER"
    FAT = "FAT"
    INPHASE = "INPHASE"
    OUTPHASE = "OUTPHASE"


NO_GROUP = "NONE"
"""dynamicGroup / dynamicPhase value of a series that is in no dynamic group."""

PHASE_PRE = "PRE"
PHASE_PROPAGATED = "POST_PROPAGATED"
