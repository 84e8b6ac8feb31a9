"""A real Orthanc that caps C-FIND results (LimitFindResults): a patient + date range request still gets
every study, because the node splits the range; without the split the request would silently get three."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from node.app import Node
from node.pull import scu
from node.pull.scheduler import address_of, settings_for
from tests.support.requests import FAST, drop, wait_state
from toolkit.dicomgen import SeriesSpec, StudySpec, make_study, write_datasets
from toolkit.peers import OrthancPeer, free_port

pytestmark = pytest.mark.integration

CAP = 3


@pytest.mark.parametrize("configured_cap", [None, CAP], ids=["cap told by the peer's Cancel", "cap configured"])
def test_a_capped_pacs_answer_is_split_by_date_and_every_study_is_pulled(
    start_node: Callable[..., Node], tmp_path: Path, configured_cap: int | None
) -> None:
    dates = ["20250105", "20250212", "20250212", "20250320", "20250401", "20250402", "20250618", "20250930"]
    studies = [StudySpec(patient_id="CAPPED1", accession=f"CAP{i}", study_date=d,
                         series=[SeriesSpec(n_slices=1, rows=8, cols=8)]) for i, d in enumerate(dates)]
    for i, spec in enumerate(studies):
        write_datasets(make_study(spec), tmp_path / "files" / str(i))
    node_port = free_port()
    orthanc = OrthancPeer(tmp_path / "orthanc", ae_title="PACS", modalities={"node": ("DICOMNODE", "127.0.0.1", node_port)},
                          config={"LimitFindResults": CAP})
    with orthanc:
        orthanc.load([tmp_path / "files"])
        peer = {"ae_title": "PACS", "host": "127.0.0.1", "port": orthanc.dicom_port, "timeout_s": 10,
                "dimse_timeout_s": 30, "max_find_results": configured_cap}
        node = start_node(node={"port": node_port}, peers={"pacs": peer}, requests=FAST)
        # The premise: this Orthanc really answers at most CAP matches, and says nothing about the rest.
        one_query = scu.find_studies(address_of(node.config.peers["pacs"]), settings_for(node.config, node.config.peers["pacs"]),
                                     {"PatientID": "CAPPED1", "StudyDate": "20250101-20251231"})
        assert len(one_query) == CAP and one_query.truncated  # Orthanc ends a capped answer with Cancel
        drop(node, "capped.yaml", "studies:\n  - patient_id: CAPPED1\n    study_date: 20250101-20251231\n"
                                  "outputs: [excel]\n")
        doc = wait_state(node, "capped", ("done", "failed"), timeout=180)
        assert doc["state"] == "done", doc
        assert sorted(s["study_uid"] for s in doc["studies"]) == sorted(s.study_uid for s in studies)
        assert doc["queries"][0]["studies_found"] == len(studies)
        assert "reason" not in doc["queries"][0]
