"""Per-series processing outcomes shared by the NIfTI writer, the workbook and the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SeriesOutcome:
    """What processing produced for one series (filled by node/nifti.py, read by the workbook/manifest).

    files are paths relative to the study's output folder (e.g. "nifti/3_t1_tse_tra.nii.gz");
    warnings are "CODE: human text" strings; skipped_reason is set when nothing was written on purpose
    (e.g. "LOCALIZER: 3-plane localizer not stacked") and error when conversion failed.
    """

    series_uid: str
    volumes: int = 0
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    skipped_reason: str | None = None
    error: str | None = None
    details: dict[str, object] = field(default_factory=dict)
    previews: tuple[str, ...] = ()  # "previews/3_t1_tse_tra.png", one per NIfTI volume set written
    qc_flags: tuple[str, ...] = ()  # "CODE: reason" from the pixel values (node/process/qc.py)
