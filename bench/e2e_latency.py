"""End-to-end latency: request file -> C-MOVE from a real Orthanc -> outbox folder, with dcm2niix as a yardstick.

Run from the repository root:  .venv/bin/python -m bench.e2e_latency [--slices 100] [--series 3] [--size 256]

Reports the wall time from the last instance received to the study's outbox folder being published, the
whole request time, and, on the same pulled files, how long dcm2niix alone takes to convert them.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from bench.report import report
from toolkit.dicomgen import SeriesSpec, StudySpec, write_study
from toolkit.nodeproc import REPO, NodeProcess
from toolkit.peers import OrthancPeer, dcm2niix_bin, free_port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=3)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp_name:
        tmp = Path(tmp_name)
        spec = StudySpec(
            patient_id="BENCH1",
            accession="BENCHACC",
            series=[
                SeriesSpec(series_number=i + 1, n_slices=args.slices, rows=args.size, cols=args.size,
                           series_description=f"series_{i + 1}", orientation=("AX", "SAG", "COR")[i % 3])
                for i in range(args.series)
            ],
        )
        write_study(spec, tmp / "src")
        n = args.series * args.slices
        node_port = free_port()
        with OrthancPeer(tmp / "orthanc", ae_title="PACS", modalities={"node": ("DICOMNODE", "127.0.0.1", node_port)}) as pacs:
            pacs.load([tmp / "src"])
            node = NodeProcess(
                tmp / "node",
                node={"port": node_port},
                peers={"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.dicom_port}},
                requests={"settle_s": 0.2, "rescan_interval_s": 1},
            )
            with node:
                started = time.time()
                subprocess.run([sys.executable, str(REPO / "daemon.py"), "--config", str(node.config_path), "request",
                                "--accession", "BENCHACC", "--name", "bench"], check=True, capture_output=True)
                status = Path(node.data["paths"]["outbox"]) / "requests" / "bench.status.yaml"
                while True:
                    doc = yaml.safe_load(status.read_text()) if status.exists() else {}
                    if doc and doc.get("state") in ("done", "failed"):
                        break
                    time.sleep(0.05)
                finished = time.time()
                folder = Path(node.data["paths"]["outbox"]) / doc["studies"][0]["outbox"]
                published = (folder / "manifest.json").stat().st_mtime
                db = sqlite3.connect(node.var / "node.db")
                (last_iso,) = db.execute("SELECT MAX(received_at) FROM instances").fetchone()
                db.close()
                last = datetime.fromisoformat(last_iso).timestamp()
                manifest = json.loads((folder / "manifest.json").read_text())
                store = node.var / "store" / spec.study_uid
        t0 = time.perf_counter()
        out = tmp / "dcm2niix"
        out.mkdir()
        subprocess.run([dcm2niix_bin(), "-z", "y", "-b", "y", "-f", "%s_%d", "-o", str(out), str(store)],
                       check=True, capture_output=True)
        d2n = time.perf_counter() - t0
    report(f"{n} instances ({args.series} series x {args.slices} slices, {args.size}x{args.size}); state {doc['state']}")
    report(f"request file -> done:                 {finished - started:6.2f} s")
    report(f"last instance received -> published:  {published - last:6.2f} s "
          f"(workbook + {len(manifest['outputs']) - 1} output files)")
    report(f"dcm2niix alone on the same files:     {d2n:6.2f} s  (NIfTI only, gzip)")
    return 0 if doc["state"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
