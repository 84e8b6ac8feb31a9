"""End to end as a user sees it: `daemon.py request` -> the daemon pulls from a real Orthanc -> outbox folder.

The node is the real daemon process; the PACS is a real Orthanc loaded with DCMTK storescu; the request file
is written by the CLI; the outputs are read back with openpyxl and nibabel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml
from openpyxl import load_workbook

from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, write_study
from toolkit.nodeproc import REPO, NodeProcess
from toolkit.peers import OrthancPeer, free_port

FAST_REQUESTS = {"settle_s": 0.2, "rescan_interval_s": 1, "backoff_base_s": 0.5, "backoff_max_s": 2}


def brain_study() -> StudySpec:
    return StudySpec(
        patient_id="E2E001",
        accession="E2EACC1",
        study_date="20250212",
        series=[
            SeriesSpec(series_number=1, series_description="t1_mprage_sag", orientation="SAG", n_slices=24,
                       extra={"MRAcquisitionType": "3D", "RepetitionTime": 2300.0, "EchoTime": 2.3,
                              "InversionTime": 900.0, "ScanningSequence": "GR\\IR", "SequenceVariant": "SP\\MP"}),
            SeriesSpec(series_number=2, series_description="t2_tse_tra", orientation="AX", n_slices=20,
                       extra={"RepetitionTime": 4000.0, "EchoTime": 100.0, "EchoTrainLength": 15}),
            SeriesSpec(series_number=3, series_description="t2_tirm_cor_flair", orientation="COR", n_slices=20,
                       extra={"RepetitionTime": 9000.0, "EchoTime": 90.0, "InversionTime": 2500.0}),
        ],
    )


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "daemon.py"), "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, check=False, cwd=config.parent,
    )


def test_a_request_written_by_the_cli_ends_as_a_complete_outbox_folder(tmp_path):
    study = brain_study()
    write_study(study, tmp_path / "src")
    node_port = free_port()
    with OrthancPeer(tmp_path / "orthanc", ae_title="PACS", modalities={"node": ("DICOMNODE", "127.0.0.1", node_port)}) as pacs:
        pacs.load([tmp_path / "src"])
        node = NodeProcess(
            tmp_path / "node",
            node={"port": node_port},
            peers={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.dicom_port, "timeout_s": 10}},
            requests=FAST_REQUESTS,
        )
        with node:
            made = run_cli(node.config_path, "request", "--accession", "E2EACC1", "--name", "brain-cohort")
            assert made.returncode == 0, made.stderr
            status_file = Path(node.data["paths"]["outbox"]) / "requests" / "brain-cohort.status.yaml"

            def done() -> dict | None:
                if not status_file.exists():
                    return None
                doc = yaml.safe_load(status_file.read_text(encoding="utf-8")) or {}
                return doc if doc.get("state") in ("done", "failed") else None

            doc = wait_for(done, timeout=180, what="the request to finish")
            assert doc is not None and doc["state"] == "done", doc
            (entry,) = doc["studies"]
            assert entry["study_uid"] == study.study_uid and entry["state"] == "done"
            folder = Path(node.data["paths"]["outbox"]) / entry["outbox"]
            assert folder.name == "E2E001_20250212_E2EACC1"
            assert (Path(node.data["paths"]["inbox"]) / "done" / "brain-cohort.yaml").exists()

            status_cli = run_cli(node.config_path, "status")
            assert status_cli.returncode == 0, status_cli.stderr
            assert "brain-cohort" in status_cli.stdout and "done" in status_cli.stdout

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["study_uid"] == study.study_uid
    assert manifest["inputs"]["instances"] == 64
    assert manifest["may_be_incomplete"] is False
    assert manifest["errors"] == []

    book = load_workbook(folder / "metadata.xlsx", read_only=True)
    assert {"DICOM_Metadata", "Series_Summary", "MR_Cleaned"} <= set(book.sheetnames)
    assert sum(1 for _ in book["DICOM_Metadata"].iter_rows(values_only=True)) == 1 + 64
    assert sum(1 for _ in book["Series_Summary"].iter_rows(values_only=True)) == 1 + 3
    header = [c.value for c in next(book["MR_Cleaned"].iter_rows(max_row=1))]
    rows = {r[header.index("SeriesDescription")]: r for r in book["MR_Cleaned"].iter_rows(min_row=2, values_only=True)}
    assert rows["t2_tirm_cor_flair"][header.index("sequenceClass")].startswith("T2_FLAIR")
    assert rows["t1_mprage_sag"][header.index("standardOrientation")] == "SAG"
    assert rows["t2_tse_tra"][header.index("standardOrientation")] == "AX"

    volumes = sorted((folder / "nifti").glob("*.nii.gz"))
    assert [v.name for v in volumes] == ["1_t1_mprage_sag.nii.gz", "2_t2_tse_tra.nii.gz", "3_t2_tirm_cor_flair.nii.gz"]
    images: dict[str, Any] = {v.name.split("_")[0]: nib.load(v) for v in volumes}
    voxels = {key: int(np.prod(img.shape)) for key, img in images.items()}
    assert voxels == {"1": 32 * 32 * 24, "2": 32 * 32 * 20, "3": 32 * 32 * 20}
    for v in volumes:
        assert v.with_suffix("").with_suffix(".json").exists()
