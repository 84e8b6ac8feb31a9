"""Several receiver processes (node.receiver_processes): one port, one store, one limit, one /metrics, one drain."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import psycopg
import pytest
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from tests.support.receivers import all_receivers, receivers
from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, make_series, multi_series_study, write_datasets, write_study
from toolkit.nodeproc import NodeProcess
from toolkit.peers import PostgresPeer, echoscu, free_port, peer_env, storescu, storescu_command

LOOPBACK = "127.0.0.1"
MIB = 1 << 20


def both_receivers(node: NodeProcess) -> list[psutil.Process]:
    return all_receivers(node, 2)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as rsp:
        text = rsp.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def stored(node: NodeProcess) -> set[str]:
    return {p.stem for p in (node.var / "store").rglob("*.dcm")}


def test_four_senders_into_two_receiver_processes_store_everything_once_and_the_parent_counts_it(tmp_path):
    web = free_port()
    with NodeProcess(tmp_path / "node", node={"receiver_processes": 2}, web={"port": web}) as node:
        both_receivers(node)
        sources = [sorted(write_study(multi_series_study(n_series=2, n_slices=25, accession=f"A{i}",
                                                         patient_id=f"P{i}"), tmp_path / f"src{i}"))
                   for i in range(4)]
        senders = [subprocess.Popen(storescu_command(LOOPBACK, node.port, "DICOMNODE", files, calling_ae=f"S{i}"),
                                    env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                   for i, files in enumerate(sources)]
        for sender in senders:
            _, err = sender.communicate(timeout=300)
            assert sender.returncode == 0 and b"Store Failed" not in err, err
        sent = {p.stem for files in sources for p in files}
        assert stored(node) == sent
        # Counted in the receivers, shown by the parent's /metrics (sent in batches: wait for the last one).
        wait_for(lambda: scrape(web).get("dicomnode_instances_received_total") == len(sent), timeout=30,
                 what="every instance counted in /metrics")
        assert scrape(web)["dicomnode_associations_active"] == 0
        with urllib.request.urlopen(f"http://{LOOPBACK}:{web}/healthz", timeout=10) as rsp:
            health = json.loads(rsp.read())
        assert health["checks"]["receivers"] == {"ok": True, "detail": "2 receiver processes serving"}
        assert "died" not in node.log()
    assert node.proc is not None and node.proc.returncode == 0


def _requestor(ae_title: str = "HOLDER") -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def test_max_associations_holds_across_the_receiver_processes_and_the_refusal_is_transient(tmp_path):
    with NodeProcess(tmp_path / "node", node={"receiver_processes": 2, "max_associations": 2}) as node:
        held = [_requestor().associate(LOOPBACK, node.port, ae_title="DICOMNODE") for _ in range(2)]
        try:
            assert all(a.is_established for a in held)
            third = _requestor().associate(LOOPBACK, node.port, ae_title="DICOMNODE")
            assert third.is_rejected
            rj = third.acceptor.primitive
            assert rj is not None
            # Rejected-transient, by the service provider (presentation), local limit exceeded: retry later.
            assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        finally:
            for assoc in held:
                assoc.release()
        wait_for(lambda: echoscu(LOOPBACK, node.port, "DICOMNODE"), timeout=30, what="a free slot again")
        assert "node.max_associations (2) reached" in node.log()


def test_a_killed_receiver_process_is_replaced_and_the_node_keeps_receiving(tmp_path):
    files = write_study(StudySpec(series=[SeriesSpec(n_slices=20)]), tmp_path / "src")
    with NodeProcess(tmp_path / "node", node={"receiver_processes": 2}) as node:
        first = both_receivers(node)
        victim = first[0]
        victim.send_signal(signal.SIGKILL)
        wait_for(lambda: "Receiver process" in node.log() and "died" in node.log(), timeout=30,
                 what="the death noticed")
        wait_for(lambda: len(receivers(node)) == 2 and victim.pid not in {p.pid for p in receivers(node)},
                 timeout=60, what="a replacement receiver")
        # A replacement that dies at once again is replaced after a pause (no tight crash loop).
        (again,) = [p for p in receivers(node) if p.pid not in {w.pid for w in first}]
        again.send_signal(signal.SIGKILL)
        wait_for(lambda: "restarted in 0.5 s" in node.log(), timeout=30, what="a paused replacement")
        wait_for(lambda: len(receivers(node)) == 2 and again.pid not in {p.pid for p in receivers(node)},
                 timeout=60, what="the second replacement")
        storescu(LOOPBACK, node.port, "DICOMNODE", files)
        assert stored(node) == {p.stem for p in files}
        assert echoscu(LOOPBACK, node.port, "DICOMNODE")


def test_receiver_processes_die_with_a_killed_node_and_free_the_port(tmp_path):
    node = NodeProcess(tmp_path / "node", node={"receiver_processes": 2}).start()
    children = both_receivers(node)
    node.kill()
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"receivers outlived the node: {[p.pid for p in alive]}"
    node.restart()  # binds the same port again
    try:
        assert echoscu(LOOPBACK, node.port, "DICOMNODE")
    finally:
        node.stop()


def test_sigterm_drains_every_receiver_process_before_the_node_exits(tmp_path):
    files = write_study(StudySpec(series=[SeriesSpec(n_slices=300, rows=64, cols=64)]), tmp_path / "src")
    node = NodeProcess(tmp_path / "node", node={"receiver_processes": 2, "drain_timeout_s": 120}).start()
    try:
        sender = subprocess.Popen(storescu_command(LOOPBACK, node.port, "DICOMNODE", [tmp_path / "src"]),
                                  env=peer_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: stored(node), what="the first stored instance")
        node.signal(signal.SIGTERM)
        _, err = sender.communicate(timeout=300)
        assert sender.returncode == 0 and "Store Failed" not in err, err
        assert node.wait(timeout=180) == 0
        assert stored(node) == {p.stem for p in files}
        log = node.log()
        assert log.count("Storage SCP stopped (0 association(s) aborted after drain)") == 2, log[-3000:]
        assert "Storage SCP stopped (2 receiver processes)" in log
    finally:
        node.kill()


def _large_study(folder: Path, total_mb: int, per_file_mb: int) -> list[Path]:
    """A study of big single-frame images (zeros compress nowhere on the wire: DICOM is sent uncompressed)."""
    side = int((per_file_mb * MIB / 2) ** 0.5)
    spec = SeriesSpec(n_slices=max(1, total_mb // per_file_mb), rows=side, cols=side, series_description="big",
                      pixel_fn=lambda r, c, k: np.full((r, c), k, dtype=np.uint16))
    return write_datasets(make_series(StudySpec(series=[]), spec), folder)


def test_receiving_a_two_gigabyte_study_over_four_associations_keeps_every_receiver_small(tmp_path):
    files = _large_study(tmp_path / "src", total_mb=2048, per_file_mb=64)
    assert sum(f.stat().st_size for f in files) >= 2 * 1024 * MIB * 0.99
    with NodeProcess(tmp_path / "node", node={"receiver_processes": 2}) as node:
        assert node.proc is not None
        parent = psutil.Process(node.proc.pid)
        workers = both_receivers(node)
        idle_parent = parent.memory_info().rss
        peak = {"receivers": 0, "parent": 0}
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                try:
                    peak["receivers"] = max(peak["receivers"], sum(w.memory_info().rss for w in workers))
                    peak["parent"] = max(peak["parent"], parent.memory_info().rss)
                except psutil.Error:
                    continue

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            senders = [subprocess.Popen(storescu_command(LOOPBACK, node.port, "DICOMNODE", files[i::4],
                                                         calling_ae=f"BIG{i}"),
                                        env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                       for i in range(4)]
            for sender in senders:
                _, err = sender.communicate(timeout=600)
                assert sender.returncode == 0 and b"Store Failed" not in err, err
        finally:
            done.set()
            sampler.join()
        assert stored(node) == {p.stem for p in files}
        assert all(w.is_running() for w in workers), "a receiver was replaced during the transfer"
    # Both receiver processes together, while 2 GB went through them; the node's own process only relays.
    assert peak["receivers"] < 300 * MIB, f"peak RSS of the receivers: {peak['receivers'] / MIB:.0f} MiB"
    assert peak["parent"] - idle_parent < 64 * MIB, f"the node grew by {(peak['parent'] - idle_parent) / MIB:.0f} MiB"


@pytest.fixture
def mr_dataset() -> Dataset:
    return make_series(StudySpec(series=[]), SeriesSpec(n_slices=1))[0]


def test_a_reload_reaches_every_receiver_process(tmp_path, mr_dataset):
    """SIGHUP with a calling-AE allow-list: no receiver still takes the AE it no longer allows."""
    node = NodeProcess(tmp_path / "node", node={"receiver_processes": 2}).start()
    try:
        data = dict(node.data)
        data["security"] = {"allowed_calling_aes": ["TRUSTED"]}
        node.config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
        node.signal(signal.SIGHUP)
        wait_for(lambda: node.log().count("applied the reloaded policy") == 2, timeout=30,
                 what="both receivers told of the new policy")
        ae = AE(ae_title="STRANGER")
        ae.add_requested_context(MRImageStorage)
        for _ in range(4):
            assoc = ae.associate(LOOPBACK, node.port, ae_title="DICOMNODE")
            assert assoc.is_rejected
        trusted = AE(ae_title="TRUSTED")
        trusted.add_requested_context(MRImageStorage)
        assoc = trusted.associate(LOOPBACK, node.port, ae_title="DICOMNODE")
        assert assoc.is_established
        status = assoc.send_c_store(mr_dataset)
        assoc.release()
        assert status.Status == 0x0000
        assert stored(node) == {mr_dataset.SOPInstanceUID}
    finally:
        node.stop()


def test_receiver_processes_index_into_postgresql_as_into_sqlite(tmp_path):
    sources = [sorted(write_study(multi_series_study(n_series=1, n_slices=30, accession=f"PG{i}",
                                                     patient_id=f"PGP{i}"), tmp_path / f"src{i}"))
               for i in range(4)]
    with PostgresPeer() as pg, NodeProcess(tmp_path / "node", node={"receiver_processes": 2},
                                           database={"url": pg.url}) as node:
        both_receivers(node)
        senders = [subprocess.Popen(storescu_command(LOOPBACK, node.port, "DICOMNODE", files, calling_ae=f"S{i}"),
                                    env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                   for i, files in enumerate(sources)]
        for sender in senders:
            _, err = sender.communicate(timeout=300)
            assert sender.returncode == 0 and b"Store Failed" not in err, err
        sent = {p.stem for files in sources for p in files}
        assert stored(node) == sent
        with psycopg.connect(pg.url) as db:
            rows = {sop for (sop,) in db.execute("SELECT sop_uid FROM instances").fetchall()}
            studies = db.execute("SELECT SUM(n_instances) FROM studies").fetchone()
        assert rows == sent and studies is not None and studies[0] == len(sent)
        assert not (node.var / "node.db").exists()
