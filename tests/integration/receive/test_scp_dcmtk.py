"""Real DCMTK clients against the node's Storage SCP: echo, single files, studies, compressed syntaxes, concurrency."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from node.app import Node
from node.store.store import dataset_offset
from toolkit.dicomgen import SeriesSpec, StudySpec, multi_series_study, write_study
from toolkit.peers import StorescpPeer, dcmtk, echoscu, peer_env, storescu, storescu_command

LOOPBACK = "127.0.0.1"


def dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(path) :]


def stored_files(node: Node) -> dict[str, Path]:
    return {p.stem: p for p in node.config.paths.store.rglob("*.dcm")}


def sop_uid_of(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def test_echoscu_gets_success_from_the_node(start_node):
    node = start_node()
    assert echoscu(LOOPBACK, node.config.node.port, "DICOMNODE")


def test_a_single_file_is_stored_byte_identical_under_its_uids(start_node, tmp_path):
    node = start_node()
    study = StudySpec(series=[SeriesSpec(n_slices=1)])
    (sent,) = write_study(study, tmp_path / "src")
    storescu(LOOPBACK, node.config.node.port, "DICOMNODE", [sent])
    stored = stored_files(node)
    assert list(stored) == [sent.stem]
    path = stored[sent.stem]
    assert path.parent.parent.name == study.study_uid
    assert path.parent.name == study.series[0].series_uid
    assert dataset_bytes(path) == dataset_bytes(sent)
    assert node.store.instance_count(study.study_uid) == 1


def test_a_multi_series_study_directory_arrives_complete_and_exact(start_node, tmp_path):
    node = start_node()
    study = multi_series_study(n_series=4, n_slices=12)
    sent = write_study(study, tmp_path / "src")
    storescu(LOOPBACK, node.config.node.port, "DICOMNODE", [tmp_path / "src"])
    stored = stored_files(node)
    assert len(stored) == len(sent) == 48
    for path in sent:
        assert dataset_bytes(stored[path.stem]) == dataset_bytes(path)
    assert node.store.instance_count(study.study_uid) == 48
    rows = node.store.query("SELECT COUNT(DISTINCT series_uid), MIN(calling_ae) FROM instances")
    assert rows == [(4, "STORESCU")]


@pytest.mark.parametrize(
    ("name", "propose"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),  # JPEG baseline
        ("JPEG-LL.dcm", "-xs"),  # JPEG lossless SV1
        ("MR_small_jpeg_ls_lossless.dcm", "-xt"),  # JPEG-LS lossless
        ("MR_small_jp2klossless.dcm", "-xv"),  # JPEG 2000 lossless
        ("MR_small_RLE.dcm", "-xr"),  # RLE lossless
        ("JPEG2000.dcm", "-xw"),  # JPEG 2000
    ],
)
def test_compressed_transfer_syntaxes_are_accepted_and_stored_as_received(start_node, tmp_path, name, propose):
    """DCMTK may re-encode a file while sending, so the oracle is what storescp +B (bit-preserving) received."""
    node = start_node()
    source = Path(str(get_testdata_file(name)))
    storescu(LOOPBACK, node.config.node.port, "DICOMNODE", [source], extra_args=[propose])
    with StorescpPeer(tmp_path / "oracle", extra_args=["+B"]) as oracle:
        storescu(LOOPBACK, oracle.port, oracle.ae_title, [source], extra_args=[propose])
        (received,) = oracle.received()
    stored = stored_files(node)
    sop = sop_uid_of(source)
    assert sop in stored
    assert dataset_bytes(stored[sop]) == dataset_bytes(received)
    (ts,) = node.store.query("SELECT transfer_syntax FROM instances WHERE sop_uid=?", (sop,))[0]
    from pydicom import dcmread

    assert ts == str(dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def test_four_concurrent_storescu_processes_deliver_every_instance(start_node, tmp_path):
    node = start_node()
    folders = []
    for i in range(4):
        study = multi_series_study(n_series=2, n_slices=15, accession=f"ACC{i}", patient_id=f"SYN{i}")
        write_study(study, tmp_path / f"src{i}")
        folders.append(tmp_path / f"src{i}")
    procs = [
        subprocess.Popen(
            storescu_command(LOOPBACK, node.config.node.port, "DICOMNODE", [f], calling_ae=f"SENDER{i}"),
            env=peer_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, f in enumerate(folders)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    stored = stored_files(node)
    assert len(stored) == 4 * 30
    for folder in folders:
        for sent in folder.glob("*.dcm"):
            assert dataset_bytes(stored[sent.stem]) == dataset_bytes(sent)
    senders = node.store.query("SELECT calling_ae, COUNT(*) FROM instances GROUP BY calling_ae ORDER BY calling_ae")
    assert senders == [(f"SENDER{i}", 30) for i in range(4)]


def test_the_same_instance_sent_twice_is_stored_once(start_node, tmp_path):
    node = start_node()
    sent = write_study(StudySpec(series=[SeriesSpec(n_slices=3)]), tmp_path / "src")
    storescu(LOOPBACK, node.config.node.port, "DICOMNODE", sent)
    storescu(LOOPBACK, node.config.node.port, "DICOMNODE", sent)
    assert len(stored_files(node)) == 3
    assert node.store.instance_count() == 3
    assert node.store.query("SELECT COUNT(*) FROM conflicts") == [(0,)]


def test_dcmtk_is_installed_where_the_tests_expect_it():
    assert Path(dcmtk("storescu")).is_file()


def test_a_disallowed_source_address_is_rejected_cleanly_every_time_never_aborted(start_node) -> None:
    node = start_node(security={"allowed_hosts": ["127.0.0.2/32"]})  # our clients connect from 127.0.0.1
    outcomes = []
    for _ in range(40):
        proc = subprocess.run(
            [dcmtk("echoscu"), "-v", "-aet", "ECHOSCU", "-aec", "DICOMNODE", "-to", "5", "-ta", "10",
             LOOPBACK, str(node.config.node.port)],
            env=peer_env(), capture_output=True, text=True, timeout=60, check=False,
        )
        outcomes.append(proc.stdout + proc.stderr)
    rejected = [o for o in outcomes if "Association Rejected" in o]
    assert len(rejected) == len(outcomes), [o for o in outcomes if o not in rejected][:2]
    assert all("Rejected Permanent" in o or "Permanent" in o for o in rejected), rejected[0]
