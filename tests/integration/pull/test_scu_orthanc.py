"""node.scu against a real Orthanc on loopback: echo, find, move, get and error classification."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from node.pull import scu
from node.pull.scu import ErrorKind, PeerAddress, ScuError, ScuSettings
from toolkit.dicomgen import SeriesSpec, StudySpec, make_study, multi_series_study, write_datasets
from toolkit.peers import OrthancPeer, free_port

pytestmark = pytest.mark.integration

NODE_AE = "DICOMNODE"
SETTINGS = ScuSettings(calling_ae=NODE_AE, acse_timeout=10, dimse_timeout=30, network_timeout=30)


@dataclass
class Receiver:
    """An in-process pynetdicom Storage SCP standing in for the node's C-MOVE destination."""

    port: int
    received: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> Series Instance UID
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle_store(self, event: evt.Event) -> int:
        ds = event.dataset
        with self.lock:
            self.received[str(ds.SOPInstanceUID)] = str(ds.SeriesInstanceUID)
        return 0x0000

    def take(self) -> dict[str, str]:
        with self.lock:
            out = dict(self.received)
            self.received.clear()
        return out


@dataclass
class Pacs:
    orthanc: OrthancPeer
    peer: PeerAddress
    receiver: Receiver
    study_a: StudySpec  # 3 series x 4 slices, PATSCU1, 20250110
    study_b: StudySpec  # 1 series x 5 slices, PATSCU1, 20250220
    sop_by_series: dict[str, list[str]]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver(port=free_port())
    ae = AE(ae_title=NODE_AE)
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", rec.port), block=False, evt_handlers=[(evt.EVT_C_STORE, rec.handle_store)])
    assert server is not None
    try:
        yield rec
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Pacs]:
    tmp = tmp_path_factory.mktemp("scu-orthanc")
    study_a = multi_series_study(n_series=3, n_slices=4, patient_id="PATSCU1", accession="ACCSCU_A", study_date="20250110")
    study_b = StudySpec(
        patient_id="PATSCU1",
        accession="ACCSCU_B",
        study_date="20250220",
        series=[SeriesSpec(modality="CT", n_slices=5, series_description="chest")],
    )
    study_c = StudySpec(
        patient_id="PATSCU2",
        accession="ACCSCU_C",
        study_description="膝关节 Übersicht",
        series=[SeriesSpec(n_slices=1, extra={"SpecificCharacterSet": "ISO_IR 192"})],
    )
    datasets = make_study(study_a) + make_study(study_b) + make_study(study_c)
    sop_by_series: dict[str, list[str]] = {}
    for ds in datasets:
        sop_by_series.setdefault(str(ds.SeriesInstanceUID), []).append(str(ds.SOPInstanceUID))
    files = write_datasets(datasets, tmp / "files")
    # Orthanc answers C-FIND in its DefaultEncoding whatever the query says; UTF-8 keeps the CJK study intact.
    orthanc = OrthancPeer(
        tmp / "orthanc",
        ae_title="PACS",
        modalities={"node": (NODE_AE, "127.0.0.1", receiver.port)},
        config={"DefaultEncoding": "Utf8"},
    )
    with orthanc:
        orthanc.load(files)
        assert orthanc.instance_count() == len(datasets)
        yield Pacs(orthanc, PeerAddress("PACS", "127.0.0.1", orthanc.dicom_port), receiver, study_a, study_b, sop_by_series)


@pytest.fixture(scope="module")
def strict_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerAddress]:
    """An Orthanc that knows no modality and lets no unknown AE do anything."""
    tmp = tmp_path_factory.mktemp("scu-strict")
    with OrthancPeer(tmp, ae_title="STRICT", allow_unknown=False, check_called_aet=True) as orthanc:
        yield PeerAddress("STRICT", "127.0.0.1", orthanc.dicom_port)


def test_echo_succeeds_against_orthanc(pacs: Pacs) -> None:
    result = scu.echo(pacs.peer, SETTINGS)
    assert result.ok, result.error
    assert result.status == 0x0000
    assert result.seconds > 0


def test_outgoing_associations_have_nagle_turned_off(pacs: Pacs) -> None:
    with scu._associate(pacs.peer, SETTINGS, [scu.build_context(scu.VERIFICATION)], "test") as assoc:
        assert assoc.dul.socket is not None
        sock = assoc.dul.socket.socket
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_find_by_accession_returns_the_one_study_with_its_counts(pacs: Pacs) -> None:
    rows = scu.find_studies(pacs.peer, SETTINGS, {"AccessionNumber": "ACCSCU_A"})
    assert len(rows) == 1
    row = rows[0]
    assert row["StudyInstanceUID"] == pacs.study_a.study_uid
    assert row["PatientID"] == "PATSCU1"
    assert row["StudyDate"] == "20250110"
    assert row["AccessionNumber"] == "ACCSCU_A"
    assert row["ModalitiesInStudy"] == ["MR"]
    assert row["NumberOfStudyRelatedInstances"] == 12
    assert row["NumberOfStudyRelatedSeries"] == 3


def test_find_by_patient_and_date_range_matches_only_studies_inside_the_range(pacs: Pacs) -> None:
    january = scu.find_studies(pacs.peer, SETTINGS, {"PatientID": "PATSCU1", "StudyDate": "20250101-20250131"})
    assert [r["StudyInstanceUID"] for r in january] == [pacs.study_a.study_uid]
    both = scu.find_studies(pacs.peer, SETTINGS, {"PatientID": "PATSCU1", "StudyDate": "20250101-20250331"})
    assert {r["StudyInstanceUID"] for r in both} == {pacs.study_a.study_uid, pacs.study_b.study_uid}
    assert scu.find_studies(pacs.peer, SETTINGS, {"PatientID": "NOBODY"}) == []


def test_find_by_modality_in_study_returns_the_ct_study(pacs: Pacs) -> None:
    rows = scu.find_studies(pacs.peer, SETTINGS, {"PatientID": "PATSCU1", "ModalitiesInStudy": "CT"})
    assert [r["StudyInstanceUID"] for r in rows] == [pacs.study_b.study_uid]


def test_a_non_ascii_query_value_matches_only_what_it_says(pacs: Pacs) -> None:
    rows = scu.find_studies(pacs.peer, SETTINGS, {"StudyDescription": "膝关节*"})
    assert [(r["AccessionNumber"], r["StudyDescription"]) for r in rows] == [("ACCSCU_C", "膝关节 Übersicht")]
    # Sent without a declared character set, these would go out as "???*" and match the knee study.
    assert scu.find_studies(pacs.peer, SETTINGS, {"StudyDescription": "肩关节*"}) == []


def test_find_series_lists_every_series_with_its_instance_count(pacs: Pacs) -> None:
    rows = scu.find_series(pacs.peer, SETTINGS, pacs.study_a.study_uid)
    by_uid = {r["SeriesInstanceUID"]: r for r in rows}
    assert set(by_uid) == {s.series_uid for s in pacs.study_a.series}
    for spec in pacs.study_a.series:
        row = by_uid[spec.series_uid]
        assert row["Modality"] == "MR"
        assert row["SeriesNumber"] == spec.series_number
        assert row["SeriesDescription"] == spec.series_description
        assert row["NumberOfSeriesRelatedInstances"] == 4
        assert scu.count_instances(pacs.peer, SETTINGS, pacs.study_a.study_uid, spec.series_uid) == 4


def test_find_instances_returns_the_sop_uids_of_a_series(pacs: Pacs) -> None:
    series_uid = pacs.study_b.series[0].series_uid
    uids = scu.find_instances(pacs.peer, SETTINGS, pacs.study_b.study_uid, series_uid)
    assert sorted(uids) == sorted(pacs.sop_by_series[series_uid])


def test_move_of_a_study_delivers_every_instance_and_counts_them(pacs: Pacs) -> None:
    pacs.receiver.take()
    progress: list[scu.MoveProgress] = []
    result = scu.move(pacs.peer, SETTINGS, NODE_AE, pacs.study_a.study_uid, on_progress=progress.append)
    received = pacs.receiver.take()
    expected = {uid for s in pacs.study_a.series for uid in pacs.sop_by_series[s.series_uid]}
    assert set(received) == expected
    assert (result.status, result.completed, result.failed, result.warning) == (0x0000, 12, 0, 0)
    assert not result.partial
    assert progress, "no pending responses reported"
    assert all(p.completed + p.remaining + p.failed + p.warning <= 12 for p in progress)


def test_a_failing_progress_callback_aborts_the_move_and_leaves_the_pacs_usable(pacs: Pacs) -> None:
    def explode(progress: scu.MoveProgress) -> None:
        raise RuntimeError("callback bug")

    with pytest.raises(RuntimeError, match="callback bug"):
        scu.move(pacs.peer, SETTINGS, NODE_AE, pacs.study_a.study_uid, on_progress=explode)
    assert scu.echo(pacs.peer, SETTINGS).ok
    pacs.receiver.take()


def test_move_of_one_series_delivers_only_that_series(pacs: Pacs) -> None:
    pacs.receiver.take()
    series_uid = pacs.study_a.series[1].series_uid
    result = scu.move(pacs.peer, SETTINGS, NODE_AE, pacs.study_a.study_uid, series_uid=series_uid)
    received = pacs.receiver.take()
    assert sorted(received) == sorted(pacs.sop_by_series[series_uid])
    assert result.completed == 4
    assert not result.partial


def test_move_of_listed_instances_delivers_just_those(pacs: Pacs) -> None:
    pacs.receiver.take()
    series_uid = pacs.study_b.series[0].series_uid
    wanted = pacs.sop_by_series[series_uid][:2]
    result = scu.move(pacs.peer, SETTINGS, NODE_AE, pacs.study_b.study_uid, series_uid=series_uid, sop_instance_uids=wanted)
    assert sorted(pacs.receiver.take()) == sorted(wanted)
    assert result.completed == 2


def test_move_to_a_destination_orthanc_does_not_know_fails_before_any_sub_operation(pacs: Pacs) -> None:
    # Orthanc 1.10 answers 0xC000 (not 0xA801) for an unknown destination: transient by PS3.4, with a hint.
    with pytest.raises(ScuError) as info:
        scu.move(pacs.peer, SETTINGS, "NOSUCHAE", pacs.study_a.study_uid)
    assert info.value.status == 0xC000
    assert info.value.kind is ErrorKind.TRANSIENT
    assert "destination AE title" in info.value.reason
    assert info.value.result is not None
    assert info.value.result.completed == 0


@pytest.fixture
def move_scp_without_destinations() -> Iterator[PeerAddress]:
    """A pynetdicom Q/R Move SCP that knows no destination: it answers 0xA801 as PS3.4 C.4.2 says."""

    def handle_move(event: evt.Event) -> Iterator[object]:
        yield None, None

    ae = AE(ae_title="QRSCP")
    ae.add_supported_context(scu.STUDY_ROOT_MOVE)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_MOVE, handle_move)])
    assert server is not None
    try:
        yield PeerAddress("QRSCP", "127.0.0.1", port)
    finally:
        server.shutdown()


def test_move_destination_unknown_status_is_a_permanent_error(move_scp_without_destinations: PeerAddress) -> None:
    with pytest.raises(ScuError) as info:
        scu.move(move_scp_without_destinations, SETTINGS, "NOSUCHAE", "1.2.3.4")
    assert info.value.status == 0xA801
    assert info.value.kind is ErrorKind.PERMANENT
    assert "move destination unknown" in info.value.reason


def test_get_of_a_series_stores_every_instance_through_the_callback(pacs: Pacs) -> None:
    stored: list[Dataset] = []

    def keep(ds: Dataset) -> int:
        stored.append(ds)
        return 0x0000

    series_uid = pacs.study_a.series[0].series_uid
    result = scu.get(pacs.peer, SETTINGS, pacs.study_a.study_uid, keep, series_uid=series_uid)
    assert sorted(str(ds.SOPInstanceUID) for ds in stored) == sorted(pacs.sop_by_series[series_uid])
    assert all(ds.file_meta.TransferSyntaxUID for ds in stored)
    assert (result.completed, result.stored, result.failed) == (4, 4, 0)


def test_get_counts_a_failing_store_callback_as_failed_sub_operations(pacs: Pacs) -> None:
    def refuse(ds: Dataset) -> int:
        raise OSError("disk full")

    series_uid = pacs.study_b.series[0].series_uid
    try:
        result = scu.get(pacs.peer, SETTINGS, pacs.study_b.study_uid, refuse, series_uid=series_uid)
    except ScuError as exc:
        assert exc.result is not None
        result = exc.result
    assert result.stored == 0
    assert result.failed == 5
    assert result.partial


def test_an_orthanc_that_does_not_know_our_ae_rejects_us_permanently(strict_pacs: PeerAddress) -> None:
    result = scu.echo(strict_pacs, SETTINGS)
    assert not result.ok
    assert result.kind is ErrorKind.PERMANENT
    assert "calling AE title not recognised" in result.error
    with pytest.raises(ScuError) as info:
        scu.find_studies(strict_pacs, SETTINGS, {"AccessionNumber": "X"})
    assert info.value.kind is ErrorKind.PERMANENT


def test_a_wrong_called_ae_title_is_rejected_permanently(pacs: Pacs) -> None:
    wrong = PeerAddress("NOTPACS", pacs.peer.host, pacs.peer.port)
    with pytest.raises(ScuError) as info:
        scu.find_studies(wrong, SETTINGS, {"AccessionNumber": "ACCSCU_A"})
    assert info.value.kind is ErrorKind.PERMANENT
    assert "called AE title not recognised" in info.value.reason


def test_a_pacs_that_is_not_listening_is_a_transient_error() -> None:
    down = PeerAddress("PACS", "127.0.0.1", free_port())
    with pytest.raises(ScuError) as info:
        scu.find_studies(down, SETTINGS, {"AccessionNumber": "X"})
    assert info.value.kind is ErrorKind.TRANSIENT
    assert "cannot connect" in info.value.reason
    echo = scu.echo(down, SETTINGS)
    assert (echo.ok, echo.kind) == (False, ErrorKind.TRANSIENT)


def test_a_stopped_orthanc_is_a_transient_error(tmp_path: Path) -> None:
    with OrthancPeer(tmp_path, ae_title="PACS") as orthanc:
        peer = PeerAddress("PACS", "127.0.0.1", orthanc.dicom_port)
        assert scu.echo(peer, SETTINGS).ok
        orthanc.close()  # killed: a PACS that went down, without the graceful shutdown wait
        with pytest.raises(ScuError) as info:
            scu.find_studies(peer, SETTINGS, {"AccessionNumber": "X"})
        assert info.value.kind is ErrorKind.TRANSIENT


def test_a_peer_at_its_association_limit_rejects_us_transiently() -> None:
    ae = AE(ae_title="BUSYSCP")
    ae.add_supported_context(scu.VERIFICATION)
    ae.maximum_associations = 1
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    peer = PeerAddress("BUSYSCP", "127.0.0.1", port)
    try:
        with scu._associate(peer, SETTINGS, [scu.build_context(scu.VERIFICATION)], "hold the only slot"):
            with pytest.raises(ScuError) as info:
                scu.find_studies(peer, SETTINGS, {"AccessionNumber": "X"})
            result = scu.echo(peer, SETTINGS)
        assert info.value.kind is ErrorKind.TRANSIENT
        assert "local limit exceeded" in info.value.reason
        assert (result.ok, result.kind) == (False, ErrorKind.TRANSIENT)
    finally:
        server.shutdown()
