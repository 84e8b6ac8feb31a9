"""A flood of hostile request files, with valid ones among them, against a node pulling from a real Orthanc:
every file gets one outcome, every valid request is picked up, a catastrophic regular expression is evaluated
without freezing anything, and every C-ECHO sent during the flood is answered (no wall-clock bound is asserted:
the suite runs on loaded machines; the figures are in the failure message when something is refused)."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.app import Node
from tests.support.requests import status
from tests.support.waiting import wait_for
from toolkit.dicomgen import SeriesSpec, StudySpec, make_study, write_datasets
from toolkit.peers import OrthancPeer, free_port

pytestmark = pytest.mark.e2e

LOOPBACK = "127.0.0.1"
HOSTILE = 300
VALID = 10


def hostile_files(n: int) -> list[tuple[bytes, bytes]]:
    """(file name, content) of n hostile request files of many kinds (all regular files named like requests)."""
    kinds: list[Callable[[int], tuple[bytes, bytes]]] = [
        lambda i: (f"nest{i}.yaml".encode(), ("[" * 15000 + "]" * 15000).encode()),
        lambda i: (f"block{i}.yaml".encode(), ("- " * 10000 + "x\n").encode()),
        lambda i: (f"alias{i}.yaml".encode(), b"a: &a [1, 2]\nb: [*a, *a, *a]\nstudies: [*a]\n"),
        lambda i: (f"types{i}.yaml".encode(), b"studies: 3\npriority: high\n"),
        lambda i: (f"syntax{i}.yaml".encode(), b"studies: [accession: \n  - : :\n"),
        lambda i: (f"binary{i}.yaml".encode(), os.urandom(2048)),
        lambda i: (f"utf16{i}.yaml".encode(), "studies:\n  - accession: X\n".encode("utf-16-le")),
        lambda i: (f"huge{i}.yaml".encode(), b"# " + b"x" * (1 << 20) + b"\n"),
        lambda i: (f"date{i}.yaml".encode(), b"studies:\n  - accession: X1\nnot_before: 2026-02-30\n"),
        lambda i: (f"ctl\x1b[2J{i}\n.yaml".encode(), b"studies: []\n"),
        lambda i: (b"latin\xe9" + str(i).encode() + b".yaml", b"studies: {}\n"),
        lambda i: (b"long" + b"x" * 230 + str(i).encode() + b".yml", b"peer: nowhere\nstudies:\n  - accession: X\n"),
        lambda i: (f"csv{i}.csv".encode(), b"AccessionNumber\n" + b"ACC*WILDCARD\n" * 2000),
        lambda i: (f"regex{i}.yaml".encode(), b"studies:\n  - accession: X\nseries_filter:\n  include: ['(a)\\1']\n"),
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


class EchoProbe(threading.Thread):
    """C-ECHO every 100 ms; records each round trip (a failure counts as infinitely slow)."""

    def __init__(self, port: int) -> None:
        super().__init__(name="echo-probe", daemon=True)
        self.port, self.stop = port, threading.Event()
        self.rtts: list[float] = []

    def run(self) -> None:
        ae = AE(ae_title="PROBE")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        while not self.stop.wait(0.1):
            started = time.monotonic()
            assoc = ae.associate(LOOPBACK, self.port, ae_title="DICOMNODE")
            ok = assoc.is_established and int(assoc.send_c_echo().Status) == 0
            if assoc.is_established:
                assoc.release()
            self.rtts.append(time.monotonic() - started if ok else float("inf"))


def test_a_flood_of_hostile_files_neither_jams_the_inbox_nor_stalls_the_receiver(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node_port = free_port()
    study = StudySpec(accession="FLOOD1", series=[SeriesSpec(n_slices=2, rows=8, cols=8,
                                                             series_description="abcdefghijklmnopqrstuvwxy" * 2)])
    write_datasets(make_study(study), tmp_path / "pacs-files")
    orthanc = OrthancPeer(tmp_path / "orthanc", ae_title="PACS", modalities={"node": ("DICOMNODE", LOOPBACK, node_port)})
    with orthanc:
        orthanc.load([tmp_path / "pacs-files"])
        node = start_node(node={"port": node_port},
                          peers={"pacs": {"ae_title": "PACS", "host": LOOPBACK, "port": orthanc.dicom_port,
                                          "timeout_s": 10, "dimse_timeout_s": 30}},
                          requests={"settle_s": 0.5, "rescan_interval_s": 2, "backoff_base_s": 0.3, "max_attempts": 2})
        inbox = node.config.paths.inbox
        probe = EchoProbe(node_port)
        probe.start()
        hostile = hostile_files(HOSTILE)
        (inbox.parent / "elsewhere.yaml").write_text("studies:\n  - accession: FLOOD1\n")
        os.symlink(inbox.parent / "elsewhere.yaml", inbox / "link.yaml")
        os.mkfifo(inbox / "fifo.yaml")
        (inbox / "folder.yaml").mkdir()
        dropped: dict[str, float] = {}
        picked: dict[str, float] = {}

        def watch_pickups() -> None:
            while len(picked) < VALID:
                for name in list(dropped):
                    if name not in picked and not (inbox / name).exists():
                        picked[name] = time.monotonic()
                time.sleep(0.02)

        watcher = threading.Thread(target=watch_pickups, daemon=True)
        watcher.start()
        step = HOSTILE // VALID
        for i, (name, data) in enumerate(hostile):
            # Written in place, as a careless user would (the settle time applies), about 30 files a second.
            with open(os.path.join(os.fsencode(inbox), name), "wb") as fh:
                fh.write(data)
            if i % step == 0:
                k = i // step
                valid = f"valid{k}.yaml"
                text = "studies:\n  - accession: FLOOD1\noutputs: [excel]\n"
                if k == 0:
                    # Valid, and evaluated against the series description: backtracking would take forever.
                    text += "series_filter:\n  include: ['(.*.*)*z']\n"
                tmp = inbox / f".{valid}.part"
                tmp.write_text(text + f"# {k}\n")
                tmp.rename(inbox / valid)
                dropped[valid] = time.monotonic()
            time.sleep(1 / 30)
        watcher.join(timeout=120)
        assert len(picked) == VALID, f"valid requests never picked up: {set(dropped) - set(picked)}"

        # Every regular file named like a request has one outcome: active/ or failed/ (with its reason).
        def settled() -> bool:
            return not [e for e in os.scandir(inbox) if e.is_file(follow_symlinks=False)
                        and e.name.endswith((".yaml", ".yml", ".csv"))]

        wait_for(settled, 120, "every hostile file to leave the inbox")
        failed = [p for p in (inbox / "failed").iterdir()
                  if not p.name.endswith(".error.txt") and not p.name.startswith("valid")]
        assert len(failed) == HOSTILE
        assert all(p.with_name(p.name + ".error.txt").exists() for p in failed)
        assert all(len(p.name.encode()) <= 140 for p in (inbox / "failed").iterdir())
        doc = wait_for(lambda: d if (d := status(node, "valid0")).get("state") in ("done", "failed") else None,
                       120, "the request with the catastrophic pattern to end")
        assert doc["state"] == "failed" and "matches no include pattern" in str(doc)
        probe.stop.set()
        probe.join(timeout=10)

    waits = sorted(picked[n] - dropped[n] for n in dropped)
    assert len(probe.rtts) > 50
    failed_echoes = sum(1 for r in probe.rtts if r == float("inf"))
    assert failed_echoes == 0, (f"{failed_echoes} C-ECHO(s) unanswered during the flood (median round trip "
                                f"{statistics.median(probe.rtts):.3f} s; pick-up waits {waits})")
    assert (inbox / "link.yaml").is_symlink() and (inbox / "folder.yaml").is_dir()  # skipped, untouched
