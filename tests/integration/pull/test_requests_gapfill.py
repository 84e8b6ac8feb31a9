"""Gap-fill: a PACS whose C-MOVE reports success but delivers only part of a series; the node re-asks only the rest."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from node.app import Node
from tests.support.requests import FAST, drop, expected_counts, series_counts, wait_state
from toolkit.dicomgen import SeriesSpec, StudySpec, make_study
from toolkit.peers import free_port

pytestmark = pytest.mark.integration


@dataclass
class LossyPacs:
    """A pynetdicom Q/R SCP over in-memory datasets; the first move of each series delivers only `first_share` of it."""

    datasets: list[Dataset]
    destination_port: int
    first_share: float = 0.5
    port: int = field(default_factory=free_port)
    moves: list[tuple[str, int]] = field(default_factory=list)  # (level, instances delivered)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _moved_series: set[str] = field(default_factory=set)

    def _matches(self, ident: Dataset) -> list[Dataset]:
        out = []
        for ds in self.datasets:
            ok = True
            for key in ("AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"):
                want = str(ident.get(key, "") or "")
                if want and str(ds.get(key, "")) != want:
                    ok = False
            sops = ident.get("SOPInstanceUID")
            if sops:
                wanted = {str(sops)} if isinstance(sops, str) else {str(u) for u in sops}
                ok = ok and str(ds.SOPInstanceUID) in wanted
            if ok:
                out.append(ds)
        return out

    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        ident = event.identifier
        level = ident.QueryRetrieveLevel
        key = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]
        seen: dict[str, list[Dataset]] = {}
        for ds in self._matches(ident):
            seen.setdefault(str(ds.get(key)), []).append(ds)
        for uid, group in seen.items():
            rsp = Dataset()
            rsp.QueryRetrieveLevel = level
            first = group[0]
            rsp.StudyInstanceUID = first.StudyInstanceUID
            setattr(rsp, key, uid)
            if level == "STUDY":
                rsp.AccessionNumber = first.AccessionNumber
                rsp.PatientID = first.PatientID
            if level == "SERIES":
                rsp.Modality = first.Modality
                rsp.SeriesNumber = first.SeriesNumber
                rsp.SeriesDescription = first.SeriesDescription
                rsp.NumberOfSeriesRelatedInstances = len(group)
            yield 0xFF00, rsp
        yield 0x0000, None

    def on_move(self, event: evt.Event) -> Iterator[Any]:
        ident = event.identifier
        yield "127.0.0.1", self.destination_port
        found = self._matches(ident)
        level = str(ident.QueryRetrieveLevel)
        series = str(ident.get("SeriesInstanceUID", ""))
        with self.lock:
            first_time = level == "SERIES" and series not in self._moved_series
            self._moved_series.add(series)
        if first_time:
            found = found[: max(1, int(len(found) * self.first_share))]  # report success, deliver a part
        with self.lock:
            self.moves.append((level, len(found)))
        yield len(found)
        for ds in found:
            yield 0xFF00, ds


@pytest.fixture
def lossy() -> Iterator[Callable[[list[Dataset], int], LossyPacs]]:
    servers: list[Any] = []

    def factory(datasets: list[Dataset], destination_port: int) -> LossyPacs:
        pacs = LossyPacs(datasets, destination_port)
        ae = AE(ae_title="LOSSY")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage, for the sub-operations
        server = ae.start_server(("127.0.0.1", pacs.port), block=False,
                                 evt_handlers=[(evt.EVT_C_FIND, pacs.on_find), (evt.EVT_C_MOVE, pacs.on_move)])
        servers.append(server)
        return pacs

    yield factory
    for server in servers:
        server.shutdown()


def test_a_move_that_delivers_only_part_of_a_series_is_gap_filled_instance_by_instance(
    start_node: Callable[..., Node], lossy: Callable[[list[Dataset], int], LossyPacs]
) -> None:
    spec = StudySpec(patient_id="PATGAP", accession="GAP1", series=[
        SeriesSpec(n_slices=8, series_number=1, series_description="a"),
        SeriesSpec(n_slices=6, series_number=2, series_description="b")])
    node_port = free_port()
    pacs = lossy(make_study(spec), node_port)
    node = start_node(node={"port": node_port}, requests=FAST,
                      peers={"pacs": {"ae_title": "LOSSY", "host": "127.0.0.1", "port": pacs.port}})
    drop(node, "gap.yaml", "studies:\n  - accession: GAP1\noutputs: [excel]\n")
    doc = wait_state(node, "gap", ("pulled", "done"))
    assert series_counts(node, spec.study_uid) == expected_counts(spec)
    # Two half moves, then one IMAGE-level move per series carrying exactly the missing instances.
    assert sorted(pacs.moves) == sorted([("SERIES", 4), ("SERIES", 3), ("IMAGE", 4), ("IMAGE", 3)])
    study = doc["studies"][0]
    assert study["attempts"] == 1
    assert study["instances"] == "14/14"
