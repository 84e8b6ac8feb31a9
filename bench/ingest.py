"""Ingest benchmark: DCMTK storescu into storescp, Orthanc and dicom-node, with Nagle on and off in the sender.

Run from the repository root:
    .venv/bin/python -m bench.ingest [--n 500] [--procs 1,4] [--only storescp,orthanc,node,node-mp] [--repeat 3]

Every round uses a fresh receiver (empty storage) so no receiver is timed on duplicates. Run 1: an ordinary
sender (Nagle on, DCMTK's default) into receivers as they ship. Run 2: a Nagle-free sender (TCP_NODELAY=1) into
the same receivers, and into storescp and Orthanc tuned the same way (`-nd`). "node" receives in the node's own
process (node.receiver_processes 1); "node-mp" in several receiver processes (--receivers, default one per
core, at least two).

storescp does not fsync anything and Orthanc does not fsync its files; the node fsyncs every file, its
directory and its index commit before it answers. The "durable floor" line measures what that costs alone:
one writer doing only those steps, serially, on the same disk: no receiver that acknowledges one instance at
a time after it is on disk can beat it with a single association.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import NodeProcess, RssSampler, make_mr_files
from bench.report import report
from toolkit.peers import OrthancPeer, StorescpPeer, peer_env, storescu_command

RECEIVERS = ("storescp", "orthanc", "node", "node-mp")
RECEIVER_PROCESSES = max(2, os.cpu_count() or 1)  # node-mp's node.receiver_processes (--receivers): one per core
NODES = ("node", "node-mp")
# Receivers with TCP_NODELAY=1 in their own env too: what DCMTK/Orthanc reach tuned (run 2 only).
TUNED = {"storescp": "storescp-nd", "orthanc": "orthanc-nd"}


@dataclass
class Round:
    sender: str  # "nagle-on" (DCMTK default) or "nodelay" (TCP_NODELAY=1 in storescu's env)
    receiver: str
    procs: int
    n: int
    seconds: float
    received: int
    failures: int
    peak_rss_mb: float | None = None
    cpu_seconds: float | None = None  # receiver CPU during the round (node only)

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Target:
    host: str
    port: int
    ae_title: str
    count: Callable[[], int]
    pid: int


def split(items: Sequence[Path], k: int) -> list[list[Path]]:
    return [list(items[i::k]) for i in range(k) if items[i::k]]


def send(target: Target, files: Sequence[Path], procs: int, nodelay: bool, workdir: Path) -> tuple[float, int]:
    """Run `procs` storescu processes at once on disjoint parts of files; wall time and failed runs."""
    env = peer_env(nodelay)
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    start = time.monotonic()
    try:
        for i, part in enumerate(split(files, procs)):
            log = workdir / f"storescu-{i}.log"
            argv = storescu_command(target.host, target.port, target.ae_title, part, calling_ae="BENCH")
            with open(log, "wb") as out:
                running.append((subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT), log))
        failures = 0
        for proc, log in running:
            if proc.wait(timeout=3600) != 0 or "Store Failed" in log.read_text(errors="replace"):
                failures += 1
        return time.monotonic() - start, failures
    finally:
        for proc, _ in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


Usage = Callable[[], tuple[float, float] | None]


@contextmanager
def receiver(kind: str, workdir: Path, receivers: int = RECEIVER_PROCESSES) -> Iterator[tuple[Target, Usage]]:
    """A fresh receiver of the given kind; yields its target and a function giving (peak RSS MB, CPU s) so far."""
    tuned = kind in TUNED.values()
    if kind in ("storescp", TUNED["storescp"]):
        # --fork: one child per association, or concurrent senders would queue behind each other.
        with StorescpPeer(workdir, ae_title="STORESCP", nodelay=tuned, extra_args=["--fork"]) as scp:
            assert scp.proc is not None
            yield Target(scp.host, scp.port, scp.ae_title, lambda: len(scp.received()), scp.proc.pid), lambda: None
    elif kind in ("orthanc", TUNED["orthanc"]):
        with OrthancPeer(workdir, ae_title="ORTHANC", nodelay=tuned) as orthanc:
            assert orthanc.proc is not None
            target = Target(orthanc.host, orthanc.dicom_port, "ORTHANC", orthanc.instance_count, orthanc.proc.pid)
            yield target, lambda: None
    elif kind in NODES:
        with NodeProcess(workdir, receiver_processes=receivers if kind == "node-mp" else 1) as node:
            assert node.proc is not None
            sampler = RssSampler(node.proc.pid).start()
            sampler.sample()
            cpu_at_start = sampler.cpu_seconds

            def usage() -> tuple[float, float]:
                sampler.sample()
                return sampler.peak / 2**20, sampler.cpu_seconds - cpu_at_start

            try:
                target = Target(node.host, node.port, node.ae_title, node.stored_files, node.proc.pid)
                yield target, usage
            finally:
                sampler.stop()
    else:
        raise ValueError(f"unknown receiver {kind!r}")


def median_round(kind: str, files: Sequence[Path], procs: int, nodelay: bool, tmp: Path, tag: str, repeat: int,
                 receivers: int = RECEIVER_PROCESSES) -> Round:
    """Run a round `repeat` times (fresh receiver each time) and keep the one with the median time."""
    runs = sorted((run_round(kind, files, procs, nodelay, tmp, f"{tag}{i}", receivers) for i in range(repeat)),
                  key=lambda r: r.seconds)
    return runs[len(runs) // 2]


def run_round(kind: str, files: Sequence[Path], procs: int, nodelay: bool, tmp: Path, tag: str,
              receivers: int = RECEIVER_PROCESSES) -> Round:
    workdir = tmp / f"{tag}-{kind}-{procs}"
    workdir.mkdir(parents=True)
    with receiver(kind, workdir / "peer", receivers) as (target, usage_of):
        seconds, failures = send(target, files, procs, nodelay, workdir)
        received = target.count()
        usage = usage_of()
    sender = "nodelay" if nodelay else "nagle-on"
    rss, cpu = usage if usage is not None else (None, None)
    result = Round(sender, kind, procs, len(files), seconds, received, failures, rss, cpu)
    note = "" if received == len(files) and not failures else f"  !! received {received}/{len(files)}, {failures} failed"
    report(f"  {sender:8} -> {kind:11} x{procs}: {seconds:7.2f} s {result.rate:8.1f} inst/s{note}")
    return result


def durable_floor(files: Sequence[Path], tmp: Path) -> float:
    """Instances per second of one serial writer doing only what the node does to make an instance durable:
    write the file, fsync it, rename it into its folder, fsync the folder, commit an index row (SQLite WAL,
    synchronous=FULL). The ceiling of any receiver that acknowledges one instance at a time after it is on disk."""
    work = tmp / "floor"
    (work / "tmp").mkdir(parents=True)
    (work / "store").mkdir()
    db = sqlite3.connect(work / "index.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE instances(sop_uid TEXT PRIMARY KEY, path TEXT, size INTEGER)")
    blobs = [f.read_bytes() for f in files]
    store_fd = os.open(work / "store", os.O_RDONLY | os.O_DIRECTORY)
    start = time.monotonic()
    for i, blob in enumerate(blobs):
        tmp_path, dest = work / "tmp" / f"{i}.part", work / "store" / f"{i}.dcm"
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, blob)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp_path, dest)
        os.fsync(store_fd)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO instances VALUES (?,?,?)", (str(i), str(dest), len(blob)))
        db.execute("COMMIT")
    seconds = time.monotonic() - start
    os.close(store_fd)
    db.close()
    return len(blobs) / seconds


def table(rounds: list[Round], floor: float | None = None) -> str:
    by_key = {(r.sender, r.receiver, r.procs): r for r in rounds}
    header = f"{'sender':9} {'receiver':11} {'procs':>5} {'seconds':>8} {'inst/s':>8} {'recv':>6}"
    lines = [header + f" {'node/this':>9} {'node-mp/this':>12} {'rss MB':>7} {'cpu s':>6}"]
    for r in rounds:
        ratios = []
        for kind, width in (("node", 9), ("node-mp", 12)):
            node = by_key.get((r.sender, kind, r.procs))
            ratios.append(f"{node.rate / r.rate:{width}.2f}" if node is not None and r.rate > 0 and r.receiver not in NODES
                          else " " * width)
        rss = f"{r.peak_rss_mb:7.1f}" if r.peak_rss_mb is not None else " " * 7
        cpu = f"{r.cpu_seconds:6.2f}" if r.cpu_seconds is not None else ""
        lines.append(f"{r.sender:9} {r.receiver:11} {r.procs:5d} {r.seconds:8.2f} {r.rate:8.1f} {r.received:6d} "
                     f"{' '.join(ratios)} {rss} {cpu}")
    lines.append("")
    for sender in ("nagle-on", "nodelay"):
        for kind in NODES:
            one, four = by_key.get((sender, kind, 1)), by_key.get((sender, kind, 4))
            if one is not None and four is not None and one.rate > 0:
                lines.append(f"{kind:8} {sender:8}: 4 associations / 1 association = {four.rate / one.rate:.2f}")
    if floor is not None:
        lines.append(f"durable floor (one serial writer, fsync file + folder + index commit): {floor:.1f} inst/s")
        for r in rounds:
            if r.receiver in NODES and r.procs == 1:
                lines.append(f"{r.receiver:8} {r.sender:8} x1: {r.rate / floor:.2f} of the durable floor")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=500, help="instances per round (default 500)")
    parser.add_argument("--procs", default="1,4", help="concurrent storescu processes per round (default 1,4)")
    parser.add_argument("--only", default=",".join(RECEIVERS), help="receivers: storescp,orthanc,node")
    parser.add_argument("--no-nodelay-run", action="store_true", help="skip the second, Nagle-free sender run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per round; the median one is reported")
    parser.add_argument("--json", type=Path, help="also write the rounds as JSON to this file")
    parser.add_argument("--receivers", type=int, default=RECEIVER_PROCESSES,
                        help=f"node.receiver_processes of node-mp (default one per core: {RECEIVER_PROCESSES})")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = set(kinds) - set(RECEIVERS)
    if unknown:
        parser.error(f"unknown receivers {sorted(unknown)}; choose from {RECEIVERS}")
    procs_list = [int(p) for p in args.procs.split(",")]

    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        files = make_mr_files(tmp / "input", args.n)
        size_kb = sum(f.stat().st_size for f in files) / len(files) / 1024
        report(f"{len(files)} MR instances, {size_kb:.1f} kB each; storescu = DCMTK, receivers on loopback; "
               f"node-mp: node.receiver_processes {args.receivers} on {os.cpu_count()} cores")
        report("run 1: sender with Nagle on (DCMTK default)")
        for procs in procs_list:
            for kind in kinds:
                rounds.append(median_round(kind, files, procs, False, tmp, "nagle", args.repeat, args.receivers))
        if not args.no_nodelay_run:
            report("run 2: sender with TCP_NODELAY=1")
            for procs in procs_list:
                run2 = kinds + [TUNED[k] for k in kinds if k in TUNED]
                for kind in run2:
                    rounds.append(median_round(kind, files, procs, True, tmp, "nodelay", args.repeat, args.receivers))
        floor = durable_floor(files, tmp)
    report()
    report(table(rounds, floor))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"rate": r.rate} for r in rounds], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
