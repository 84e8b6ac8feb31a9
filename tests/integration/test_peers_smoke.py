"""Smoke test of the real-peer helpers: Orthanc on loopback, loaded and queried with DCMTK."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from toolkit.dicomgen import multi_series_study, write_study
from toolkit.peers import OrthancPeer, StorescpPeer, dcmtk, echoscu, findscu_study_uids, free_port, port_open

pytestmark = pytest.mark.integration


def test_free_port_returns_a_port_nobody_listens_on() -> None:
    port = free_port()
    assert 1024 < port < 65536
    assert not port_open("127.0.0.1", port)


def test_dcmtk_tool_path_is_the_debian_one_and_a_missing_tool_fails_loudly() -> None:
    assert dcmtk("storescu") == "/usr/bin/storescu"
    with pytest.raises(RuntimeError, match="dcmtk"):
        dcmtk("no-such-dcmtk-tool")


def test_orthanc_receives_a_two_series_study_and_findscu_finds_it_by_accession(tmp_path: Path) -> None:
    study = multi_series_study(n_series=2, n_slices=5, accession="SMOKE0001", patient_id="SMOKEPAT")
    files = write_study(study, tmp_path / "study")
    with OrthancPeer(tmp_path / "orthanc") as orthanc:
        assert echoscu(orthanc.host, orthanc.dicom_port, orthanc.ae_title)
        orthanc.load(files)
        assert orthanc.instance_count() == 10
        assert orthanc.study_uids() == [study.study_uid]
        found = findscu_study_uids(
            orthanc.host, orthanc.dicom_port, orthanc.ae_title, {"AccessionNumber": "SMOKE0001"}, workdir=tmp_path
        )
        assert found == [study.study_uid]
        assert (
            findscu_study_uids(orthanc.host, orthanc.dicom_port, orthanc.ae_title, {"AccessionNumber": "NOPE"}, workdir=tmp_path)
            == []
        )


def test_orthanc_restart_keeps_its_ports_and_its_data(tmp_path: Path) -> None:
    files = write_study(multi_series_study(n_series=1, n_slices=3), tmp_path / "study")
    with OrthancPeer(tmp_path / "orthanc") as orthanc:
        orthanc.load(files)
        ports = (orthanc.dicom_port, orthanc.http_port)
        orthanc.restart()
        assert (orthanc.dicom_port, orthanc.http_port) == ports
        assert orthanc.instance_count() == 3
    assert orthanc.proc is None
    assert not port_open("127.0.0.1", ports[0])


def test_peers_whose_port_was_taken_before_start_move_to_fresh_ports(tmp_path: Path) -> None:
    orthanc = OrthancPeer(tmp_path / "orthanc")
    storescp = StorescpPeer(tmp_path / "storescp")
    with socket.socket() as thief_a, socket.socket() as thief_b:
        thief_a.bind(("0.0.0.0", orthanc.dicom_port))
        thief_a.listen()
        thief_b.bind(("0.0.0.0", storescp.port))
        thief_b.listen()
        taken = (orthanc.dicom_port, storescp.port)
        with orthanc, storescp:
            assert orthanc.dicom_port != taken[0]
            assert storescp.port != taken[1]
            assert echoscu(orthanc.host, orthanc.dicom_port, orthanc.ae_title)
            assert echoscu(storescp.host, storescp.port, storescp.ae_title)
