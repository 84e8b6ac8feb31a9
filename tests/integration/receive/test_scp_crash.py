"""Crash safety: SIGKILL the node while four DCMTK storescu processes send, restart it, check every acknowledgement."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from node.store.store import dataset_sha256
from tests.support.receivers import all_receivers, receivers
from tests.support.storescu_log import acknowledged, dataset_bytes
from toolkit.dicomgen import multi_series_study, write_study
from toolkit.nodeproc import NodeProcess
from toolkit.peers import peer_env, storescu, storescu_command

LOOPBACK = "127.0.0.1"
SENDERS = 4
SUCCESS = "Received Store Response (Success)"


def test_the_acknowledgement_parser_reads_real_storescu_output():
    log = (
        "I: Requesting Association\nI: Association Accepted (Max Send PDV: 16372)\n"
        "I: Sending file: /d/a.dcm\nI: Converting transfer syntax: Little Endian Explicit -> Little Endian Explicit\n"
        "I: Sending Store Request (MsgID 1, MR)\nI: Received Store Response (Success)\n"
        "I: Sending file: /d/b.dcm\nI: Sending Store Request (MsgID 2, MR)\n"
        "I: Received Store Response (Out of Resources)\n"
        "I: Sending file: /d/c.dcm\nI: Sending Store Request (MsgID 3, MR)\n"
        "E: Store Failed, file: /d/c.dcm:\nE: 0006:0317 Peer aborted Association (or never connected)\n"
    )
    assert acknowledged(log) == (["/d/a.dcm"], ["/d/a.dcm", "/d/b.dcm", "/d/c.dcm"])


def indexed(var: Path) -> dict[str, tuple[str, str]]:
    """sop_uid -> (relative path, sha256) from the node's index (read-only, beside the running daemon)."""
    db = sqlite3.connect(f"file:{var / 'node.db'}?mode=ro", uri=True, timeout=30)
    try:
        return {sop: (path, sha) for sop, path, sha in db.execute("SELECT sop_uid, path, sha256 FROM instances")}
    finally:
        db.close()


@pytest.mark.parametrize(("processes", "victim"), [(1, "node"), (2, "node"), (2, "one receiver"), (2, "every receiver")])
def test_every_instance_acknowledged_before_a_sigkill_is_present_and_intact_after_restart(node_process, tmp_path,
                                                                                           processes, victim):
    node: NodeProcess = node_process(node={"receiver_processes": processes})
    if processes > 1:
        all_receivers(node, processes)
    sources: list[list[Path]] = []
    for i in range(SENDERS):
        study = multi_series_study(n_series=3, n_slices=30, accession=f"ACC{i}", patient_id=f"SYN{i}")
        sources.append(sorted(write_study(study, tmp_path / f"src{i}")))
    by_name = {str(p): p for files in sources for p in files}
    total = len(by_name)
    logs = [tmp_path / f"storescu{i}.log" for i in range(SENDERS)]
    senders = []
    for i, files in enumerate(sources):
        with logs[i].open("wb") as log:
            cmd = storescu_command(LOOPBACK, node.port, "DICOMNODE", files, calling_ae=f"SENDER{i}", extra_args=["-v"])
            senders.append(subprocess.Popen(cmd, env=peer_env(), stdout=subprocess.DEVNULL, stderr=log))

    def acks_so_far() -> int:
        return sum(log.read_text(errors="replace").count(SUCCESS) for log in logs)

    deadline = time.monotonic() + 120
    while acks_so_far() < total // 6:
        assert time.monotonic() < deadline, "the senders never got going"
        assert all(s.poll() is None for s in senders), "a sender finished before the crash"
        time.sleep(0.01)
    if victim == "node":
        node.kill()  # receiver processes die with it (PR_SET_PDEATHSIG)
    else:
        for receiver in receivers(node)[: 1 if victim == "one receiver" else None]:
            receiver.send_signal(signal.SIGKILL)
    for sender in senders:
        sender.wait(timeout=300)
    leftovers = sorted(p.name for p in (node.var / "tmp").rglob("*") if p.is_file())
    if victim != "node":
        # The node replaced its receivers and kept running; a restart is what checks the store against the index.
        assert node.stop() == 0, node.log()[-3000:]

    acked: list[Path] = []
    unanswered = 0
    for log in logs:
        ok, started = acknowledged(log.read_text(errors="replace"))
        acked += [by_name[name] for name in ok]
        unanswered += len(started) - len(ok)
    assert len(acked) < total, "every instance was acknowledged: the kill came too late to test anything"
    assert unanswered + len(acked) <= total

    node.restart()
    swept = [p for p in (node.var / "tmp").rglob("*") if p.is_file()]
    assert swept == [], f"temp files not swept (before restart: {leftovers})"
    stored = {p.stem: p for p in (node.var / "store").rglob("*.dcm")}
    index = indexed(node.var)
    for sent in acked:
        sop = sent.stem
        assert sop in stored, f"acknowledged {sop} lost"
        assert dataset_bytes(stored[sop]) == dataset_bytes(sent), f"acknowledged {sop} damaged"
        assert sop in index, f"acknowledged {sop} not in the index"
    for sop, (rel, sha) in index.items():
        assert dataset_sha256(node.var / rel) == sha, f"index row of {sop} does not match its file"
    # After the restart the store and the index agree exactly: a file renamed in before the kill but never
    # indexed (never acknowledged) has gone to quarantine, and no row points at a missing file.
    assert set(stored) == set(index), f"files without rows: {set(stored) - set(index)}, rows without files: " \
                                      f"{set(index) - set(stored)}"

    # The senders retry everything: the store converges on exactly what was sent, with no false conflicts.
    storescu(LOOPBACK, node.port, "DICOMNODE", [tmp_path / f"src{i}" for i in range(SENDERS)])
    stored = {p.stem: p for p in (node.var / "store").rglob("*.dcm")}
    assert sorted(stored) == sorted(p.stem for p in by_name.values())
    for sent in by_name.values():
        assert dataset_bytes(stored[sent.stem]) == dataset_bytes(sent)
    assert len(indexed(node.var)) == total
    assert list((node.var / "conflicts").iterdir()) == []
